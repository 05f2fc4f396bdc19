"""Real deploys: the playbooks, over real SSH, against four simulated Pis (tests/fleet/simpi.py): three Debian
bookworm, as Raspberry Pi OS bookworm, and one Debian trixie (Python 3.13), as Raspberry Pi OS trixie.

The tests run in order on one fleet: converge, idempotence, check mode, what is on each Pi, a real cycle,
a fleet config update, a bad value stopped at the canary, secrets in output, the status table, and then the metrics
served by Debian's prometheus-node-exporter, which the role installs on sim-pi-3 (bookworm) and sim-pi-4
(trixie) from a flat archive on each of them (a simulated Pi cannot reach deb.debian.org; the package is
bookworm's, downloaded by this machine), and what a broken collector does to them and to the status table.
Then Home Assistant over MQTT on sim-pi-2 (bookworm: paho 1.6) and sim-pi-4 (trixie: paho 2.x): a real
mosquitto on the controller's side of their links, with TLS from the test CA, a password per Pi and the
README's ACL; the role's CA file, config and listener unit; the state and discovery after a cycle; and the
listener, started as its unit would, applying Home Assistant's override within seconds. Then canary rollouts:
a good change in batches of one Pi, 20 %, the rest, and an unreachable canary stopping them. Last, demand
response events through playbooks/event.yml: every Pi, a --limit pair, an unreachable fifth Pi, the end of an event.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root
from tests.fleet.simpi import Fleet, recap

COLLECTOR = "/usr/local/lib/dreadpi/collectors/whoami-collector"
READINGS = {"sim-pi-1": (350, "drm2"), "sim-pi-2": (550, "drm3"), "sim-pi-3": (900, "drm0"),
            "sim-pi-4": (450, "drm3")}
SUITES = {"sim-pi-4": "trixie"}  # the others are bookworm
NODE_EXPORTER = ("sim-pi-3", "sim-pi-4")  # with dreadpi_metrics_node_exporter
ARCHIVE = "/srv/dreadpi-archive"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
MQTT_PIS = ("sim-pi-2", "sim-pi-4")  # with dreadpi_mqtt_host and dreadpi_mqtt_commands
BROKER = "broker.dreadpi.test"  # each MQTT Pi's /etc/hosts points it at the controller's side of its link
HA_USER, HA_PASSWORD = "homeassistant", "ha0fleet0S3cret"
MQTT_PASSWORDS = {name: f"mqtt0{name.replace('-', '0')}0S3cret0pw" for name in MQTT_PIS}
# The README's ACL: Home Assistant alone writes command topics; each Pi writes its own state, availability
# and discovery configs, and reads its own commands.
MQTT_ACL = f"user {HA_USER}\ntopic readwrite homeassistant/#\ntopic read dreadpi/#\ntopic write dreadpi/+/command\n" + \
    "".join(f"\nuser {name}\ntopic write dreadpi/{name}/state\ntopic write dreadpi/{name}/listener\n"
            f"topic read dreadpi/{name}/command\ntopic write homeassistant/+/dreadpi_{name}/+/config\n"
            for name in MQTT_PIS)
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "dreadpi/__init__.py").read_text()).group(1)
SECRETS = [
    "example0pvoutput0key0a1b2c3d4e5f60718293a4b5c", "example0enphase0api0key0f00dfeed",
    "example0enphase0client0id0cafe", "example0enphase0client0secret0beef", "example0enphase0refresh0token0d00d",
    "example0envoy0jwt.eyJleGFtcGxlIjoiZW52b3kifQ.ZXhhbXBsZTBzaWduYXR1cmU", *MQTT_PASSWORDS.values(),
]
OUTPUTS: list = []  # every playbook's output, for the secrets check


@pytest.fixture(scope="module")
def fleet(certs):
    require_root()
    from tests import mosquitto
    from tests.fleet import debs

    mosquitto.install()
    broker_dir = Path(tempfile.mkdtemp(prefix="dreadpi-fleet-broker-"))
    broker_dir.chmod(0o755)
    ca, cert, key = mosquitto.certificate(certs, broker_dir, BROKER, f"DNS:{BROKER}")
    tls_port = mosquitto.free_port()
    per_host = {name: {"dreadpi_script_command": f"{COLLECTOR} {watts}"} for name, (watts, _) in READINGS.items()}
    for name in NODE_EXPORTER:
        per_host[name]["dreadpi_metrics_node_exporter"] = True
    for name in MQTT_PIS:
        per_host[name].update({
            "dreadpi_mqtt_host": BROKER, "dreadpi_mqtt_port": str(tls_port), "dreadpi_mqtt_username": name,
            "dreadpi_mqtt_password": MQTT_PASSWORDS[name],
            "dreadpi_mqtt_ca_cert": ca.read_text(), "dreadpi_mqtt_commands": True})
    exporter = debs.debian_deb("prometheus-node-exporter")
    with tempfile.TemporaryDirectory(prefix="dreadpi-fleet-archive-") as scratch, Fleet(
            len(READINGS), per_host=per_host, suites=SUITES, host_vars={
                "dreadpi_relays_backend": "sim",
                "dreadpi_policy_min_dwell": 0,
                "dreadpi_collector_scripts": [str(REPO / "tests/fleet/files/whoami-collector")],
            }) as running:
        repository = debs.archive(Path(scratch) / "archive", [exporter])
        for pi in running.pis:
            if pi.name in NODE_EXPORTER:
                for path in sorted(repository.iterdir()):
                    pi.put(path, f"{ARCHIVE}/{path.name}")
                # This Pi's only archive, where the role's apt finds the package.
                pi.ssh(f"echo 'deb [trusted=yes] file:{ARCHIVE} ./' | sudo tee /etc/apt/sources.list >/dev/null "
                       "&& sudo rm -f /etc/apt/sources.list.d/*")
        mqtt_pis = [pi for pi in running.pis if pi.name in MQTT_PIS]
        users = {HA_USER: HA_PASSWORD, **MQTT_PASSWORDS}
        running.broker = mosquitto.Broker(broker_dir, users, MQTT_ACL, ca, cert, key,
                                          tuple(pi.gateway for pi in mqtt_pis), tls_port)
        try:
            for pi in mqtt_pis:
                pi.ssh(f"echo '{pi.gateway} {BROKER}' | sudo tee -a /etc/hosts >/dev/null")
            yield running
        finally:
            running.broker.close()
            shutil.rmtree(broker_dir, ignore_errors=True)


def play(fleet, playbook: str, *args: str, check: bool = True):
    result = fleet.ansible(playbook, *args, check=check)
    OUTPUTS.append(result.stdout + result.stderr)
    return result


def test_converge(fleet):
    # sim-pi-1 was deployed by a role from before the package: the program unpacked under /usr/local.
    legacy = fleet.pis[0]
    legacy.ssh("sudo mkdir -p /usr/local/lib/dreadpi/0.0.9/dreadpi "
               "&& sudo touch /usr/local/lib/dreadpi/dreadpi-0.0.9.tar "
               "&& printf '#!/bin/sh\\nexit 9\\n' | sudo tee /usr/local/bin/dreadpi >/dev/null "
               "&& sudo chmod 755 /usr/local/bin/dreadpi")
    result = play(fleet, "site.yml", "-v", "--diff")
    counts = recap(result.stdout)
    assert set(counts) == set(READINGS)
    for host, count in counts.items():
        assert count["failed"] == 0 and count["unreachable"] == 0, host
        assert count["changed"] > 0, host
    # Moved to the package: nothing of the old install is left to shadow /usr/bin/dreadpi on cron's PATH.
    assert legacy.ssh("ls -A /usr/local/lib/dreadpi").stdout.split() == ["collectors"]
    assert legacy.ssh("ls /usr/local/bin/dreadpi", check=False).returncode != 0


def test_a_second_run_changes_nothing(fleet):
    counts = recap(play(fleet, "site.yml").stdout)
    assert all(count["changed"] == 0 and count["failed"] == 0 for count in counts.values()), counts


def test_check_mode_changes_nothing_and_fails_nothing(fleet):
    counts = recap(play(fleet, "site.yml", "--check", "--diff").stdout)
    assert all(count["changed"] == 0 and count["failed"] == 0 for count in counts.values()), counts


@pytest.mark.parametrize("name", sorted(READINGS))
def test_what_is_on_the_pi(fleet, name):
    pi = next(pi for pi in fleet.pis if pi.name == name)
    facts = pi.ssh(
        "sudo stat -c '%U %G %a %n' /etc/dreadpi/dreadpi.cfg /etc/cron.d/dreadpi /etc/logrotate.d/dreadpi "
        f"/var/lib/dreadpi /var/log/dreadpi /usr/bin/dreadpi {COLLECTOR} /usr/lib/dreadpi"
    ).stdout.split("\n")
    assert "root root 600 /etc/dreadpi/dreadpi.cfg" in facts
    assert "root root 644 /etc/cron.d/dreadpi" in facts
    assert "root root 644 /etc/logrotate.d/dreadpi" in facts
    assert "root root 755 /var/lib/dreadpi" in facts and "root root 755 /var/log/dreadpi" in facts
    assert f"root root 755 {COLLECTOR}" in facts

    assert pi.ssh("sudo dreadpi --version").stdout.strip() == f"dreadpi {VERSION}"
    assert pi.ssh("sudo sh -c 'command -v dreadpi'").stdout.strip() == "/usr/bin/dreadpi"
    # From the Debian package, nothing left of the program in /usr/local but the role's collector programs.
    assert pi.ssh("dpkg-query -W -f='${db:Status-Abbrev} ${Version}' dreadpi").stdout == f"ii  {VERSION}"
    assert pi.ssh("ls /usr/local/lib/dreadpi").stdout.split() == ["collectors"]

    cron = pi.ssh("cat /etc/cron.d/dreadpi").stdout
    assert cron.endswith("\n")
    assert ("*/15 5-21 * * * root [ -x /usr/bin/dreadpi ] && /usr/bin/dreadpi run >/var/log/dreadpi/lastrun.txt 2>&1"
            in cron)
    assert "@reboot root [ -x /usr/bin/dreadpi ] && sleep 60 && /usr/bin/dreadpi run" in cron

    assert pi.ssh("sudo logrotate -d /etc/logrotate.d/dreadpi", check=False).returncode == 0

    account = pi.ssh("getent passwd nobody").stdout.strip().split(":")
    assert account[6] == "/usr/sbin/nologin"
    owned = pi.ssh("sudo find /etc/dreadpi /var/lib/dreadpi /var/log/dreadpi /usr/local/lib/dreadpi /usr/lib/dreadpi "
                   "/usr/bin/dreadpi -user nobody -o -group nogroup -o -perm -o+w").stdout
    assert owned.strip() == ""
    assert pi.ssh("sudo -u nobody cat /etc/dreadpi/dreadpi.cfg", check=False).returncode != 0
    assert pi.ssh("sudo -u nobody touch /var/lib/dreadpi/x", check=False).returncode != 0

    packages = pi.ssh("dpkg-query -W -f='${Package} ${Status}\\n' python3 cron logrotate").stdout
    assert packages.count("install ok installed") == 3

    release = pi.ssh("cat /etc/debian_version").stdout
    assert release.startswith("13." if SUITES.get(name) == "trixie" else "12."), release
    config = pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    assert "backend = sim\nhold = auto\n" in config
    # Simulated relays: no relay hold service, and no GPIO package was asked for.
    assert pi.ssh("ls /etc/systemd/system/dreadpi-relay-hold.service "
                  "/etc/systemd/system/multi-user.target.wants/dreadpi-relay-hold.service", check=False).returncode != 0
    # (dpkg knows their names from the package's Suggests, as "un": not installed.)
    states = pi.ssh("dpkg-query -W -f='${db:Status-Abbrev}\\n' python3-rpi.gpio python3-rpi-lgpio", check=False).stdout
    assert all(state[1] in "nc" for state in states.split()), states


@pytest.mark.parametrize("name", sorted(READINGS))
def test_a_real_cycle_on_the_pi_with_the_collector_as_nobody(fleet, name):
    pi = next(pi for pi in fleet.pis if pi.name == name)
    watts, mode = READINGS[name]
    result = pi.ssh("sudo dreadpi run")
    assert f" {mode} " in result.stdout and f"{watts} W" in result.stdout
    assert pi.ssh("cat /tmp/dreadpi-collector-id").stdout.strip() == \
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    status = pi.ssh("sudo dreadpi status --json").stdout
    assert f'"mode": "{mode}"' in status


def test_a_fleet_config_update_changes_a_threshold_everywhere(fleet):
    result = play(fleet, "config.yml", "-e", "dreadpi_policy_threshold_low=600")
    counts = recap(result.stdout)
    assert all(count["changed"] == 1 and count["failed"] == 0 for count in counts.values()), counts
    for pi in fleet.pis:
        assert "threshold_low = 600\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    # sim-pi-2 reads 550 W and sim-pi-4 (trixie) 450 W: below the new threshold_low, so now drm2.
    assert " drm2 " in fleet.pis[1].ssh("sudo dreadpi run").stdout
    assert " drm2 " in fleet.pis[3].ssh("sudo dreadpi run").stdout


def config_checksums(fleet) -> dict:
    return {pi.name: pi.ssh("sudo sha256sum /etc/dreadpi/dreadpi.cfg").stdout for pi in fleet.pis}


def batches(output: str) -> list:
    """The hosts of each batch of a serial play, in order: ansible-playbook prints a PLAY header per batch."""
    found = []
    for block in output.split("PLAY RECAP", 1)[0].split("\nPLAY [")[1:]:
        hosts = {match.group(1) for match in re.finditer(r"^(?:ok|changed|failed|fatal|skipping): \[([^\]\s]+)",
                                                          block, re.MULTILINE)}
        found.append(sorted(hosts))
    return found


@pytest.mark.parametrize("playbook", ["config.yml", "site.yml"])
def test_a_bad_value_stops_at_the_canary_and_reaches_no_other_pi(fleet, playbook):
    before = config_checksums(fleet)
    result = play(fleet, playbook, "-e", "dreadpi_policy_threshold_low=900", check=False)
    assert result.returncode == 2, result.stdout
    assert batches(result.stdout) == [["sim-pi-1"]], result.stdout  # the canary, and no further batch
    assert list(recap(result.stdout)) == ["sim-pi-1"]
    assert recap(result.stdout)["sim-pi-1"]["failed"] == 1
    # The last message before the recap names the Pi and the reason its own check-config gave.
    last = " ".join(result.stdout.split("PLAY RECAP", 1)[0].rsplit("fatal: ", 1)[1].split())
    assert last.startswith("[sim-pi-1]: FAILED!") and "ROLLOUT STOPPED at sim-pi-1: " in last, last
    assert "policy.threshold_low: must be below threshold_high (700), got 900" in last, last
    assert config_checksums(fleet) == before


def test_a_wrong_variable_fails_before_anything_is_touched(fleet):
    result = play(fleet, "site.yml", "--limit", "sim-pi-1", "-e", "dreadpi_relays_backend=gpio", check=False)
    assert result.returncode != 0
    assert "dreadpi_relays_backend" in result.stdout and "rpi-gpio, gpiochip, sim" in result.stdout
    assert recap(result.stdout)["sim-pi-1"]["changed"] == 0
    # What argument_specs cannot say is checked before anything too.
    result = play(fleet, "site.yml", "--limit", "sim-pi-1", "-e", "dreadpi_metrics_node_exporter=true",
                  "-e", "dreadpi_metrics_textfile_dir=/srv/metrics", check=False)
    assert result.returncode != 0
    # (Refused by the role's first task, the read-only probe, which prints the message and stops.)
    assert ('dreadpi: refused before anything was touched: dreadpi_metrics_textfile_dir must be empty or '
            '/var/lib/prometheus/node-exporter with dreadpi_metrics_node_exporter' in " ".join(result.stdout.split())
            ), result.stdout
    counts = recap(result.stdout)["sim-pi-1"]
    assert counts["changed"] == 0 and counts["failed"] == 1, counts
    result = play(fleet, "config.yml", "--limit", "sim-pi-1", "-e", "dreadpi_cron_schedule='*/15 5-21 * *'",
                  check=False)
    assert 'dreadpi_cron_schedule must be five cron time fields such as "*/15 5-21 * * *", got "*/15 5-21 * *"' \
        in " ".join(result.stdout.split()), result.stdout
    assert recap(result.stdout)["sim-pi-1"]["changed"] == 0


API_SOURCES = {  # what each API source needs besides the vaulted secrets
    "pvoutput": ("-e", "dreadpi_pvoutput_system_id=12345", "-e", "dreadpi_pvoutput_timezone=Australia/Sydney"),
    "enphase": ("-e", "dreadpi_enphase_system_id=4242", "-e", "dreadpi_policy_max_age=3600"),
    "envoy": ("-e", "dreadpi_envoy_host=192.0.2.1"),
}


def test_secrets_never_appear_in_output(fleet):
    # Render configs that carry the vaulted secrets, with --diff and -vvv. Check mode renders and diffs the
    # file without running the validator, so a template task that let its diff through would print them here.
    for source, extra in API_SOURCES.items():
        result = play(fleet, "config.yml", "--limit", "sim-pi-1", "--check", "--diff", "-vvv",
                      "-e", f"dreadpi_collector_source={source}", *extra)
        assert recap(result.stdout)["sim-pi-1"]["changed"] == 1  # the config would change: it was rendered
        # And for real: the Pi's dreadpi check-config accepts the rendered secrets, and nothing is printed.
        result = play(fleet, "config.yml", "--limit", "sim-pi-1", "--diff", "-vvv",
                      "-e", f"dreadpi_collector_source={source}", *extra)
        assert recap(result.stdout)["sim-pi-1"]["changed"] == 1
    play(fleet, "config.yml", "--limit", "sim-pi-1")
    assert OUTPUTS
    for output in OUTPUTS:
        for secret in SECRETS:
            assert secret not in output


def test_status_shows_every_pi(fleet):
    result = play(fleet, "status.yml")
    table = result.stdout.split("msg: |-", 1)[1]
    assert re.search(r"host\s+mode\s+%\s+watts\s+age\s+health\s+credential\s+override\s+version\s+reason",
                     table)
    # The last cycles: sim-pi-2 (550 W) and sim-pi-4 (450 W) went to drm2 when the fleet update raised
    # threshold_low to 600.
    expected = {"sim-pi-1": ("drm2", 50, 350), "sim-pi-2": ("drm2", 50, 550), "sim-pi-3": ("drm0", 100, 900),
                "sim-pi-4": ("drm2", 50, 450)}
    for name, (mode, percent, watts) in expected.items():
        pattern = rf"{name}\s+{mode}\s+{percent}\s+{watts}\s+\d+ s\s+ok\s+-\s+-\s+{re.escape(VERSION)}\s"
        assert re.search(pattern, table), table


def start_node_exporter(pi) -> None:
    """Start the installed prometheus-node-exporter as its systemd unit would (the simulated Pi has no systemd):
    the unit's User, its EnvironmentFile's ARGS, its ExecStart, plus the Pi's address to listen on. Whatever the
    package's init script may have started on installation is stopped first. It ends with the Pi."""
    unit = pi.ssh("systemctl cat prometheus-node-exporter.service 2>/dev/null || "
                  "cat /lib/systemd/system/prometheus-node-exporter.service").stdout
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["ExecStart"].startswith("/usr/bin/prometheus-node-exporter"), unit
    pi.ssh("sudo pkill -x prometheus-node || true")
    command = (f"set -a; . {settings['EnvironmentFile'].lstrip('-')}; set +a; "
               f"exec runuser -u {settings['User']} -- {settings['ExecStart']} --web.listen-address={pi.address}:9100")
    pi.ssh(f"sudo setsid sh -c {shlex.quote(command)} </dev/null >/tmp/node-exporter.log 2>&1 &")


def scrape(pi, timeout: float = 15) -> dict:
    """`series -> value` of the dreadpi and textfile-collector series, from http://PI:9100/metrics, as Prometheus
    would scrape them from the controller."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{pi.address}:9100/metrics", timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(pi.ssh("cat /tmp/node-exporter.log", check=False).stdout) from None
            time.sleep(0.2)
    series = {}
    for line in text.splitlines():
        if line.startswith(("dreadpi_", "node_textfile_")):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


@pytest.mark.parametrize("name", NODE_EXPORTER)
def test_node_exporter_serves_the_metrics_of_each_cycle(fleet, name):
    pi = next(pi for pi in fleet.pis if pi.name == name)
    assert "ii" in pi.ssh("dpkg-query -W -f='${db:Status-Abbrev}' prometheus-node-exporter").stdout
    assert pi.ssh("test -L /etc/systemd/system/multi-user.target.wants/prometheus-node-exporter.service",
                  check=False).returncode == 0
    assert f"textfile_dir = {TEXTFILE_DIR}\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    pi.ssh("sudo dreadpi run")
    start_node_exporter(pi)
    series = scrape(pi)
    watts, _ = READINGS[name]
    mode = "drm0" if name == "sim-pi-3" else "drm2"  # sim-pi-4 (450 W) is below the raised threshold_low
    assert series["node_textfile_scrape_error"] == 0
    assert series[f'dreadpi_mode{{mode="{mode}"}}'] == 1
    assert sum(value for key, value in series.items() if key.startswith("dreadpi_mode{")) == 1
    assert series["dreadpi_generation_watts"] == watts
    assert series["dreadpi_failsafe"] == 0 and series["dreadpi_consecutive_failsafe_cycles"] == 0
    assert series[f'dreadpi_info{{version="{VERSION}"}}'] == 1
    assert abs(series["dreadpi_last_cycle_timestamp_seconds"] - time.time()) < 120
    assert series["dreadpi_cycle_interval_seconds"] == 900  # from the role's */15 cron schedule


def test_a_broken_collector_shows_in_the_metrics_and_the_status_table(fleet):
    pi = next(pi for pi in fleet.pis if pi.name == "sim-pi-3")
    before = scrape(pi)
    counts = recap(play(fleet, "config.yml", "--limit", pi.name, "-e", "dreadpi_script_command=/bin/false").stdout)
    assert counts[pi.name]["changed"] == 1 and counts[pi.name]["failed"] == 0
    for _ in range(2):
        assert pi.ssh("sudo dreadpi run", check=False).returncode == 4  # the failsafe was applied
    series = scrape(pi)
    assert series["dreadpi_failsafe"] == 1 and series["dreadpi_consecutive_failsafe_cycles"] == 2
    assert series['dreadpi_problem{problem="bad-answer"}'] == 1
    assert series['dreadpi_mode{mode="drm0"}'] == 1  # the default failsafe mode
    assert series["dreadpi_last_good_reading_timestamp_seconds"] == \
        before["dreadpi_last_good_reading_timestamp_seconds"]
    table = play(fleet, "status.yml").stdout.split("msg: |-", 1)[1]
    assert re.search(rf"{pi.name}\s+drm0\s+100\s+-\s+-\s+bad-answer x2 since \d\d-\d\d \d\d:\d\d\s", table), table
    assert re.search(r"sim-pi-4\s+drm2\s+50\s+450\s+\d+ s\s+ok\s", table), table


def test_the_role_deploys_into_a_root_filesystem_through_chroot(root, tmp_path):
    # What the image bake does: no SSH, no running system, the role unchanged.
    from tests.fleet.simpi import chroot_playbook

    first, second = chroot_playbook("site.yml", tmp_path, {"dreadpi_relays_backend": "sim", "dreadpi_mqtt_host":
                                    "broker.example", "dreadpi_mqtt_commands": True}, runs=2)
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    (counts_first,), (counts_second,) = recap(first.stdout).values(), recap(second.stdout).values()
    assert counts_first["changed"] > 0 and counts_second["changed"] == 0, (counts_first, counts_second)
    upper = tmp_path / "upper"
    config = (upper / "etc/dreadpi/dreadpi.cfg").stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, 0, 0o600)
    assert (upper / "etc/cron.d/dreadpi").stat().st_mode & 0o777 == 0o644
    assert (upper / "etc/logrotate.d/dreadpi").exists()
    assert (upper / "usr/bin/dreadpi").read_text().startswith("#!/usr/bin/python3 -I")
    assert (upper / "usr/lib/dreadpi/BUILD").read_text().startswith(f"{VERSION} ")
    assert list((upper / "usr/lib/dreadpi/dreadpi").glob("__pycache__/cli.cpython-3*.pyc"))  # byte-compiled
    # As the image bake leaves it: the MQTT listener enabled (its link, as for ssh), to start at the first boot.
    wants = upper / "etc/systemd/system/multi-user.target.wants/dreadpi-mqtt-listen.service"
    assert wants.is_symlink() and (upper / "etc/systemd/system/dreadpi-mqtt-listen.service").exists()
    for output in (first.stdout, second.stdout):
        for secret in SECRETS:
            assert secret not in output


def home_assistant(fleet, *topics: str, count: int) -> dict:
    """What Home Assistant finds retained on `topics` ({topic: payload}) when it connects, as the HA user."""
    from tests.mosquitto import Client

    home = Client(fleet.broker, HA_USER, HA_PASSWORD)
    try:
        home.subscribe(*topics)
        assert home.wait(lambda found: len(found) >= count, 10), home.latest()
        return home.latest()
    finally:
        home.close()


@pytest.mark.parametrize("name", MQTT_PIS)
def test_home_assistant_finds_the_pi_and_its_state_after_a_cycle(fleet, name):
    pi = next(pi for pi in fleet.pis if pi.name == name)
    paho = pi.ssh("/usr/bin/python3 -I -c 'import paho.mqtt; print(paho.mqtt.__version__)'").stdout.strip()
    assert paho.startswith("2." if SUITES.get(name) == "trixie" else "1.6"), paho  # Debian's, both APIs
    assert pi.ssh("stat -c '%U %a' /etc/dreadpi/mqtt-ca.pem").stdout.strip() == "root 644"
    config = pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    assert "ca_file = /etc/dreadpi/mqtt-ca.pem\ntopic_prefix = \n" in config and f"host = {BROKER}\n" in config
    pi.ssh("sudo dreadpi run")
    status = json.loads(pi.ssh("sudo dreadpi status --json").stdout)
    node = f"dreadpi_{name}"
    errors = pi.ssh("sudo cat /var/log/dreadpi/error.log", check=False).stdout
    assert "mqtt" not in errors, errors
    found = home_assistant(fleet, f"homeassistant/+/{node}/+/config", f"dreadpi/{name}/state", count=8)
    state = json.loads(found[f"dreadpi/{name}/state"])
    assert (state["mode"], state["watts"], state["reason"]) == (status["mode"], status["watts"], status["reason"])
    generation = json.loads(found[f"homeassistant/sensor/{node}/generation/config"])
    assert generation["device"]["identifiers"] == [node] and generation["unique_id"] == f"{node}_generation"
    assert generation["expire_after"] == 1800  # two intervals of the role's */15 schedule
    select = json.loads(found[f"homeassistant/select/{node}/control/config"])
    assert select["command_topic"] == f"dreadpi/{name}/command"
    assert not any(password in payload for payload in found.values() for password in MQTT_PASSWORDS.values())


@pytest.mark.parametrize("name", MQTT_PIS)
def test_the_listener_unit_applies_home_assistants_override_within_seconds(fleet, name):
    from tests.mosquitto import Client

    pi = next(pi for pi in fleet.pis if pi.name == name)
    assert pi.ssh("test -L /etc/systemd/system/multi-user.target.wants/dreadpi-mqtt-listen.service",
                  check=False).returncode == 0
    unit = pi.ssh("cat /etc/systemd/system/dreadpi-mqtt-listen.service").stdout
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    command = f"cd {settings['WorkingDirectory']} && exec {settings['ExecStart']}"
    # As its unit would start it: as root, in its working directory (the simulated Pi has no systemd).
    pi.ssh(f"sudo setsid sh -c {shlex.quote(command)} </dev/null >/tmp/mqtt-listen.log 2>&1 &")
    home = Client(fleet.broker, HA_USER, HA_PASSWORD)
    try:
        home.subscribe(f"dreadpi/{name}/listener")
        assert home.wait(lambda found: found.get(f"dreadpi/{name}/listener") == "online", 20), \
            pi.ssh("cat /tmp/mqtt-listen.log").stdout
        for option, expected in (("normal for 1 h", "drm0"), ("automatic", None)):
            sent = time.monotonic()
            home.publish(f"dreadpi/{name}/command", json.dumps({"option": option, "at": int(time.time())}))
            while True:
                override = json.loads(pi.ssh("sudo dreadpi status --json").stdout)["override"]
                if (override or {}).get("mode") == expected:
                    break
                assert time.monotonic() - sent < 2, (option, override, pi.ssh("cat /tmp/mqtt-listen.log").stdout)
                time.sleep(0.1)
        # A cron cycle now only signals the service, which publishes the state on its connection.
        home.subscribe(f"dreadpi/{name}/state")
        pi.ssh("sudo dreadpi run")
        updated = json.loads(pi.ssh("sudo dreadpi status --json").stdout)["updated_at"]
        assert home.wait(lambda found: json.loads(found.get(f"dreadpi/{name}/state", "{}")).get("updated_at")
                         == updated, 5), pi.ssh("cat /tmp/mqtt-listen.log").stdout
        assert "publishing to and listening on" in pi.ssh("cat /tmp/mqtt-listen.log").stdout
    finally:
        home.close()
        pi.ssh("sudo pkill -f '[d]readpi mqtt-listen' || true")  # the pattern must not match this command
    assert pi.ssh("sleep 1; test -e /var/lib/dreadpi/mqtt-service.json", check=False).returncode == 1  # withdrawn


def test_a_good_change_goes_to_one_pi_then_20_percent_then_the_rest(fleet):
    canary = [["sim-pi-1"], ["sim-pi-2"], ["sim-pi-3", "sim-pi-4"]]  # 20 % of four Pis is one
    result = play(fleet, "config.yml", "-e", "dreadpi_policy_threshold_low=610")
    assert batches(result.stdout) == canary, result.stdout
    counts = recap(result.stdout)
    assert all(count["changed"] >= 1 and count["failed"] == 0 for count in counts.values()), counts
    for pi in fleet.pis:
        assert "threshold_low = 610\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    # dreadpi_rollout_batch still sets the batches.
    result = play(fleet, "config.yml", "-e", "dreadpi_rollout_batch=2", "-e", "dreadpi_policy_threshold_low=610")
    assert batches(result.stdout) == [["sim-pi-1", "sim-pi-2"], ["sim-pi-3", "sim-pi-4"]], result.stdout
    # A full deploy goes the same way; it also puts back the inventory's settings the earlier tests changed.
    result = play(fleet, "site.yml")
    assert batches(result.stdout) == canary, result.stdout
    for pi in fleet.pis:
        assert "threshold_low = 400\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout



def test_an_unreachable_canary_stops_the_rollout(tmp_path):
    # Ansible does not rescue an unreachable Pi, and starts the next batch after one under any_errors_fatal: the
    # playbooks' first task stops each later batch before it touches a Pi. No Pi needed: three addresses of the
    # benchmark range where nothing answers (no simulated fleet uses 198.18.255.0/24).
    from tests.fleet.simpi import ansible_env, playbook_argv, write_inventory

    inventory = write_inventory(tmp_path / "inventory", {f"gone-{n}": {
        "ansible_host": f"198.18.255.{249 + n}", "ansible_user": "pi",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2",
    } for n in (1, 2, 3)})
    for playbook in ("config.yml", "site.yml"):
        result = subprocess.run(playbook_argv(inventory, playbook), capture_output=True, text=True,
                                env=ansible_env(tmp_path), cwd=REPO)
        assert result.returncode != 0, result.stdout
        assert batches(result.stdout) == [["gone-1"], ["gone-2"]], result.stdout  # the canary, then a stop
        assert "fatal: [gone-1]: UNREACHABLE!" in result.stdout
        last = " ".join(result.stdout.split("PLAY RECAP", 1)[0].rsplit("fatal: ", 1)[1].split())
        assert last.startswith("[gone-2]: FAILED!") and "ROLLOUT STOPPED before this batch" in last, last
        assert "gone-1: a Pi failed or could not be reached" in last, last
        assert "gone-3" not in result.stdout.split("PLAY RECAP", 1)[0]

EVENT_ROW = re.compile(r"^\s*(\S+)\s+(yes|no|failed|unreachable|\?)\s+(\S+)\s+(-|\?|\d{4}-\d\d-\d\d \d\d:\d\d)\s+(.*)$")


def event_table(output: str) -> tuple:
    """({host: (applied, mode, until, reason)}, summary line) from event.yml's table."""
    table = output.split("TASK [Print one line per Pi]", 1)[1].split("msg: |-", 1)[1]
    lines = table.split("\n\n", 1)[0].strip().splitlines()
    assert re.match(r"host\s+applied\s+mode\s+until\s+reason$", lines[0]), lines
    rows = {}
    for line in lines[1:-1]:
        match = EVENT_ROW.match(line)
        assert match, line
        rows[match.group(1)] = match.groups()[1:]
    return rows, lines[-1].strip()


def overrides(fleet) -> dict:
    return {pi.name: json.loads(pi.ssh("sudo dreadpi status --json").stdout)["override"] for pi in fleet.pis}


def test_an_invalid_event_is_refused_before_any_pi_is_touched(fleet):
    before = overrides(fleet)
    for args, variable in ((("-e", "dreadpi_event_mode=drm5", "-e", "dreadpi_event_for=2h"), "dreadpi_event_mode"),
                           (("-e", "dreadpi_event_mode=drm2", "-e", "dreadpi_event_for=9d"), "dreadpi_event_for"),
                           (("-e", "dreadpi_event_mode=drm2"), "dreadpi_event_for")):
        result = play(fleet, "event.yml", *args, check=False)
        assert result.returncode == 2, result.stdout
        message = " ".join(result.stdout.split())
        assert f"msg: {variable} must be" in message and "no Pi was touched" in message, result.stdout
        assert "TASK [Apply the event" not in result.stdout and "msg: |-" not in result.stdout  # no Pi, no table
    assert overrides(fleet) == before


def test_an_event_applies_on_every_pi_at_once(fleet):
    result = play(fleet, "event.yml", "-e", "dreadpi_event_mode=drm2", "-e", "dreadpi_event_for=2h")
    assert batches(result.stdout) == [sorted(READINGS)]  # one batch: no serial
    assert all(count["changed"] == 1 and count["failed"] == 0 for count in recap(result.stdout).values())
    rows, summary = event_table(result.stdout)
    assert summary == "applied on all 4 Pis"
    now = time.time()
    for name, override in overrides(fleet).items():
        assert override["mode"] == "drm2", (name, override)
        until = datetime.datetime.fromisoformat(override["until"])
        assert abs(until.timestamp() - (now + 7200)) < 120, override
        applied, mode, shown, reason = rows[name]
        assert (applied, mode, shown) == ("yes", "drm2", override["until"][:16].replace("T", " ")), rows[name]
        assert reason == f"manual override to drm2 until {override['until'][11:16]}", reason


def test_an_event_on_a_limit_group_touches_only_those(fleet):
    before = overrides(fleet)
    # The fleet's boards have no relays.drm1 (the original two-relay board): each Pi refuses, and says why.
    result = play(fleet, "event.yml", "-e", "dreadpi_event_mode=drm1", "-e", "dreadpi_event_for=30m",
                  "--limit", "sim-pi-1,sim-pi-2", check=False)
    assert result.returncode == 2, result.stdout
    rows, summary = event_table(result.stdout)
    assert rows == dict.fromkeys(("sim-pi-1", "sim-pi-2"), (
        "failed", "-", "-", "dreadpi: override: this board cannot assert drm1 (relays.drm1 is not set)")), rows
    assert summary == "applied on 0 of 2 Pis; not on: sim-pi-1,sim-pi-2"
    assert overrides(fleet) == before

    result = play(fleet, "event.yml", "-e", "dreadpi_event_mode=drm3", "-e", "dreadpi_event_for=30m",
                  "--limit", "sim-pi-1,sim-pi-2")
    rows, summary = event_table(result.stdout)
    assert sorted(rows) == ["sim-pi-1", "sim-pi-2"] and summary == "applied on all 2 Pis", rows
    after = overrides(fleet)
    assert after["sim-pi-1"]["mode"] == after["sim-pi-2"]["mode"] == "drm3"
    assert (after["sim-pi-3"], after["sim-pi-4"]) == (before["sim-pi-3"], before["sim-pi-4"])


def test_an_unreachable_pi_is_a_row_and_the_others_still_apply(fleet, tmp_path):
    # One more Pi in the group, at an address of the benchmark range where nothing answers.
    extra = tmp_path / "gone.yml"
    extra.write_text(json.dumps({"dreadpi": {"hosts": {"sim-pi-gone": {
        "ansible_host": f"198.18.{fleet.octet}.254", "ansible_user": "pi",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3",
    }}}}))
    result = play(fleet, "event.yml", "-i", str(extra), "-e", "dreadpi_event_mode=drm0", "-e", "dreadpi_event_for=45m",
                  check=False)
    assert result.returncode == 2, result.stdout  # not applied everywhere
    rows, summary = event_table(result.stdout)
    assert rows["sim-pi-gone"][:3] == ("unreachable", "-", "-"), rows
    assert summary == "applied on 4 of 5 Pis; not on: sim-pi-gone"
    counts = recap(result.stdout)
    assert counts["sim-pi-gone"]["failed"] == 1
    for pi, override in overrides(fleet).items():
        assert rows[pi][:2] == ("yes", "drm0") and override["mode"] == "drm0", (pi, rows[pi], override)
        assert counts[pi]["failed"] == 0 and counts[pi]["changed"] == 1


def test_clear_ends_the_event_everywhere(fleet):
    # Last of the event tests: it leaves the fleet with no override, as it found it.
    result = play(fleet, "event.yml", "-e", "dreadpi_event_mode=clear")
    rows, summary = event_table(result.stdout)
    assert summary == "applied on all 4 Pis"
    assert all(row[0] == "yes" and row[2] == "-" for row in rows.values()), rows
    assert all(count["changed"] == 1 for count in recap(result.stdout).values())
    assert overrides(fleet) == dict.fromkeys(READINGS)
    again = play(fleet, "event.yml", "-e", "dreadpi_event_mode=clear")
    assert all(count["changed"] == 0 and count["failed"] == 0 for count in recap(again.stdout).values())
