"""The role and the GPIO packages, on three simulated bookworm Pis with real relays (relays.backend = rpi-gpio).

RPi.GPIO comes from one of two conflicting packages: python3-rpi-lgpio (Raspberry Pi OS) or python3-rpi.gpio
(Debian). The role must keep whichever is installed, run no apt at all when one is, and install one only when
none is: python3-rpi-lgpio where the archives offer it, else python3-rpi.gpio. Stand-ins for those packages are
built here (tests/fleet/debs.py); a Pi's "archive" is a flat apt repository on the Pi itself, since a simulated
Pi has no route to a real one.

- gpio-pi-1, as Raspberry Pi OS: python3-rpi-lgpio (and python3-lgpio) installed before the deploy, with dpkg.
- gpio-pi-2: no RPi.GPIO; its archive offers python3-rpi-lgpio, as Raspberry Pi OS's does.
- gpio-pi-3: no RPi.GPIO; its archive is Debian's kind, with python3-rpi.gpio and no python3-rpi-lgpio. Debian
  builds python3-rpi.gpio for arm64 and armhf only, so for this amd64 Pi the stand-in is compiled here.

And the relay hold service's unit on each: installed, enabled offline (systemd is installed but not running on a
simulated Pi), verified with systemd-analyze, removed with relays.hold = no. Then real cycles on gpio-pi-1 through
an emulated gpiochip (tests/gpiochip): rpi-lgpio drives the relays itself where the kernel keeps released outputs,
and the unit's own command holds them where it does not.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root
from tests.fleet.simpi import Fleet, recap, task_results

COLLECTOR = "/usr/local/lib/dreadpi/collectors/whoami-collector"
LGPIO_PI, ARCHIVE_LGPIO_PI, ARCHIVE_DEBIAN_PI = "gpio-pi-1", "gpio-pi-2", "gpio-pi-3"
ARCHIVE = "/srv/dreadpi-archive"
UNIT = "/etc/systemd/system/dreadpi-relay-hold.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/dreadpi-relay-hold.service"
MARKER = "/root/.before-deploy"
REFRESH = "Refresh the package lists, to see what the configured archives offer"
INSTALL = "Install the Debian packages the configuration needs"
EXPECTED_PROVIDER = {LGPIO_PI: "python3-rpi-lgpio", ARCHIVE_LGPIO_PI: "python3-rpi-lgpio",
                     ARCHIVE_DEBIAN_PI: "python3-rpi.gpio"}
OUTPUTS: dict = {}
TIMES: dict = {}


def prepare(fleet: Fleet, scratch: Path) -> None:
    """What each Pi has before the first deploy (see the module docstring)."""
    from tests.fleet import debs

    built = debs.standin_debs("amd64")
    pis = {pi.name: pi for pi in fleet.pis}
    lgpio = [built["python3-lgpio"], built["python3-rpi-lgpio"]]
    for deb in lgpio:
        pis[LGPIO_PI].put(deb, f"/root/debs/{deb.name}")
    pis[LGPIO_PI].ssh("sudo sh -c 'dpkg -i /root/debs/*.deb'")
    archives = {ARCHIVE_LGPIO_PI: lgpio, ARCHIVE_DEBIAN_PI: [built["python3-rpi.gpio"]]}
    for name, packages in archives.items():
        repository = debs.archive(scratch / name, packages)
        for path in sorted(repository.iterdir()):
            pis[name].put(path, f"{ARCHIVE}/{path.name}")
        # This Pi's only archive; a simulated Pi cannot reach deb.debian.org.
        pis[name].ssh(f"echo 'deb [trusted=yes] file:{ARCHIVE} ./' | sudo tee /etc/apt/sources.list >/dev/null")
    for pi in fleet.pis:
        pi.ssh(f"sudo touch {MARKER}")


@pytest.fixture(scope="module")
def fleet():
    require_root()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dreadpi-gpio-archives-") as scratch, Fleet(3, prefix="gpio-pi", host_vars={
        "dreadpi_relays_backend": "rpi-gpio",
        "dreadpi_policy_min_dwell": 0,
        "dreadpi_collector_scripts": [str(REPO / "tests/fleet/files/whoami-collector")],
        "dreadpi_script_command": f"{COLLECTOR} 350",
    }) as running:
        TIMES["fleet up"] = time.monotonic() - started
        prepare(running, Path(scratch))
        TIMES["prepared"] = time.monotonic() - started
        yield running


def pi_named(fleet: Fleet, name: str):
    return next(pi for pi in fleet.pis if pi.name == name)


def package_states(pi) -> dict:
    listing = pi.ssh("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' python3-rpi-lgpio python3-lgpio "
                     "python3-rpi.gpio", check=False).stdout
    return {line.split()[0]: line.split()[1] for line in listing.splitlines() if line.strip()}


def apt_traces(pi) -> list:
    """What apt leaves, newer than the marker: its history log, the binary cache the apt module builds, refreshed
    package lists. (dpkg -i, used to prepare a Pi, leaves none of these.)"""
    return pi.ssh(f"sudo find /var/log/apt /var/cache/apt /var/lib/apt/lists -newer {MARKER} "
                  "\\( -name history.log -o -name '*.bin' -o -path '/var/lib/apt/lists/*' \\)").stdout.split()


def test_converge(fleet):
    started = time.monotonic()
    result = fleet.ansible("site.yml", "-v")
    TIMES["first deploy"] = time.monotonic() - started
    OUTPUTS["first"] = result.stdout
    counts = recap(result.stdout)
    assert set(counts) == set(EXPECTED_PROVIDER)
    assert all(count["failed"] == 0 and count["changed"] > 0 for count in counts.values()), counts
    # Only the Pis with no RPi.GPIO asked their archive, and installed one.
    assert task_results(result.stdout, REFRESH) == {LGPIO_PI: "skipping", ARCHIVE_LGPIO_PI: "changed",
                                                    ARCHIVE_DEBIAN_PI: "changed"}
    assert task_results(result.stdout, INSTALL) == {LGPIO_PI: "skipping", ARCHIVE_LGPIO_PI: "changed",
                                                    ARCHIVE_DEBIAN_PI: "changed"}


def test_a_pi_with_rpi_lgpio_keeps_it_and_runs_no_apt(fleet):
    pi = pi_named(fleet, LGPIO_PI)
    states = package_states(pi)
    assert states["python3-rpi-lgpio"] == states["python3-lgpio"] == "ii", states
    assert states.get("python3-rpi.gpio", "un")[1] in "nc", states  # not installed (dpkg may know its name)
    assert apt_traces(pi) == []
    assert pi.ssh("ls /var/log/apt/history.log /var/cache/apt/pkgcache.bin", check=False).returncode != 0


@pytest.mark.parametrize("name", sorted(EXPECTED_PROVIDER))
def test_rpi_gpio_comes_from_the_expected_package(fleet, name):
    pi = pi_named(fleet, name)
    provider = EXPECTED_PROVIDER[name]
    other = ({"python3-rpi-lgpio", "python3-rpi.gpio"} - {provider}).pop()
    states = package_states(pi)
    assert states.get(provider) == "ii" and states.get(other, "un")[1] in "nc", states
    # The module a root cycle (python3 -I) imports is that package's file.
    origin = pi.ssh("cd /tmp && sudo python3 -I -c "
                    "\"import importlib.util as u; print(u.find_spec('RPi.GPIO').origin)\"").stdout.strip()
    assert origin == "/usr/lib/python3/dist-packages/RPi/GPIO/__init__.py"
    assert pi.ssh(f"dpkg -S {origin}").stdout.split(":")[0] == provider


@pytest.mark.parametrize("name", [LGPIO_PI, ARCHIVE_LGPIO_PI])
def test_rpi_gpio_and_lgpio_import_as_rpi_lgpio(fleet, name):
    pi = pi_named(fleet, name)
    # rpi-lgpio reads the board revision at import; off a Pi it takes it from the environment.
    imported = pi.ssh("cd /tmp && RPI_LGPIO_REVISION=c03114 python3 -I -c "
                      "\"import RPi.GPIO, lgpio; print(RPi.GPIO.__file__, lgpio.__file__, RPi.GPIO.RPI_INFO['TYPE'])\""
                      ).stdout.split(maxsplit=2)
    assert imported[0] == "/usr/lib/python3/dist-packages/RPi/GPIO/__init__.py"
    assert imported[1] == "/usr/lib/python3/dist-packages/lgpio.py"
    assert imported[2].strip() == "Pi 4 Model B"
    owners = pi.ssh(f"dpkg -S {imported[0]} {imported[1]}").stdout
    assert "python3-rpi-lgpio: " in owners and "python3-lgpio: " in owners


@pytest.mark.parametrize("name", sorted(EXPECTED_PROVIDER))
def test_the_relay_hold_service_is_installed_and_enabled(fleet, name):
    pi = pi_named(fleet, name)
    assert pi.ssh(f"stat -c '%U %G %a' {UNIT}").stdout.strip() == "root root 644"
    unit = pi.ssh(f"cat {UNIT}").stdout
    for line in ("Type=simple", "ExecStart=/usr/bin/dreadpi relay-hold", "Restart=on-failure",
                 "RestartSec=2", "After=local-fs.target", "WantedBy=multi-user.target", "DevicePolicy=closed",
                 "DeviceAllow=char-gpiochip rw", "DeviceAllow=/dev/gpiomem rw", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/dreadpi", "NoNewPrivileges=yes"):
        assert f"\n{line}\n" in unit, line
    # Enabled offline, as `systemctl enable` does: the link that starts it at boot.
    assert pi.ssh(f"readlink {WANTS}").stdout.strip() == UNIT
    assert pi.ssh("systemctl is-enabled dreadpi-relay-hold.service").stdout.strip() == "enabled"
    # systemd is installed on the simulated Pi (as on Raspberry Pi OS), so its own checker is there to run.
    verify = pi.ssh(f"sudo systemd-analyze verify {UNIT}", check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    assert "hold = auto\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout


def test_a_second_run_and_a_check_run_change_nothing_and_run_no_apt(fleet):
    for pi in fleet.pis:
        pi.ssh(f"sudo touch {MARKER}")
    started = time.monotonic()
    again = fleet.ansible("site.yml")
    TIMES["second deploy"] = time.monotonic() - started
    counts = recap(again.stdout)
    assert all(count["changed"] == 0 and count["failed"] == 0 for count in counts.values()), counts
    # Nothing on the install side is even loaded where the probe finds it all in place.
    assert task_results(again.stdout, INSTALL) == {} and task_results(again.stdout, REFRESH) == {}
    # Check mode on one of them (the others take the same branches now): the GPIO and hold service tasks too.
    started = time.monotonic()
    check = fleet.ansible("site.yml", "--check", "--limit", LGPIO_PI)
    TIMES["check run"] = time.monotonic() - started
    counts = recap(check.stdout)
    assert counts[LGPIO_PI]["changed"] == 0 and counts[LGPIO_PI]["failed"] == 0, counts
    for pi in fleet.pis:  # every Pi has an RPi.GPIO now: none runs apt again
        assert apt_traces(pi) == [], pi.name


def test_hold_no_removes_the_service_and_the_config_update_brings_it_back(fleet):
    pi = pi_named(fleet, LGPIO_PI)
    # false as YAML writes `no` unquoted: the config still says `hold = no`.
    result = fleet.ansible("config.yml", "--limit", LGPIO_PI, "-e", json.dumps({"dreadpi_relays_hold": False}))
    assert recap(result.stdout)[LGPIO_PI]["changed"] == 2, result.stdout  # the config, and the service removed
    assert "hold = no\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout
    assert pi.ssh(f"ls {UNIT}", check=False).returncode != 0
    assert pi.ssh(f"ls {WANTS}", check=False).returncode != 0
    again = fleet.ansible("config.yml", "--limit", LGPIO_PI, "-e", "dreadpi_relays_hold=no")
    assert recap(again.stdout)[LGPIO_PI]["changed"] == 0
    back = fleet.ansible("config.yml", "--limit", LGPIO_PI)
    assert recap(back.stdout)[LGPIO_PI]["changed"] == 2  # the files (config and unit, one task), and enabling it
    assert pi.ssh(f"readlink {WANTS}").stdout.strip() == UNIT
    assert "hold = auto\n" in pi.ssh("sudo cat /etc/dreadpi/dreadpi.cfg").stdout


# ---- real cycles through an emulated gpiochip (tests/gpiochip) --------------------------------------------------

GPIO17, GPIO27 = 17, 27


def on_the_pi(pi, fake, argv: list) -> list:
    """The command that runs `argv` as root inside the simulated Pi's root filesystem, on the fake Pi's GPIO:
    it enters the Pi's mount namespace, binds the fake's files into the Pi at the same paths, chroots, and there
    does what FakePi does (mount the fake /dev, /sys and /proc files, LD_PRELOAD the shim)."""
    fake_command, environment = fake.command(argv)
    inside = fake_command[fake_command.index("sh"):]  # sh -c MOUNT_SCRIPT fakepi WORKDIR PRELOAD argv...
    merged = pi.dir / "merged"
    binds = [str(fake.workdir), str(fake.shim.parent)]
    enter = ("set -e; root=$1; shift; for dir in " + " ".join(shlex.quote(b) for b in binds) + "; do "
             'mkdir -p "$root$dir"; mount --bind "$dir" "$root$dir"; done; exec chroot "$root" "$@"')
    command = ["nsenter", f"--target={pi.proc.pid}", "--mount", "--", "unshare", "--mount", "--propagation",
               "private", "sh", "-c", enter, "enter", str(merged), *inside]
    return command, environment


def run_on_the_pi(pi, fake, argv: list, timeout: float = 120) -> subprocess.CompletedProcess:
    command, environment = on_the_pi(pi, fake, argv)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def cron_cycle() -> list:
    """A cycle as cron runs it: root, from root's home (where lgpio makes its notification pipe)."""
    return ["sh", "-c", "cd /root && exec /usr/bin/dreadpi run"]


@pytest.fixture(scope="module")
def gpiochip():
    emulation = pytest.importorskip("tests.gpiochip", reason="the gpiochip emulation (tests/gpiochip) is not here")
    return emulation


def test_a_real_cycle_on_the_pi_drives_the_relays_through_rpi_lgpio(fleet, gpiochip):
    pi = pi_named(fleet, LGPIO_PI)
    with gpiochip.FakePi("pi4", persist=True) as fake:
        result = run_on_the_pi(pi, fake, cron_cycle())
        assert result.returncode == 0, result.stdout + result.stderr
        assert " drm2 " in result.stdout, result.stdout
        lines = fake.lines()
        # drm2: relay 1 energised, active high; both lines stay driven after the cycle exited.
        assert (lines[GPIO17].direction, lines[GPIO17].level) == ("out", 1), lines[GPIO17]
        assert (lines[GPIO27].direction, lines[GPIO27].level) == ("out", 0), lines[GPIO27]
        assert not lines[GPIO17].used and not lines[GPIO27].used
    assert pi.ssh("cat /tmp/dreadpi-collector-id").stdout.strip() == \
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"


def test_where_the_kernel_drops_released_lines_the_units_command_holds_them(fleet, gpiochip):
    pi = pi_named(fleet, LGPIO_PI)
    unit = pi.ssh(f"cat {UNIT}").stdout
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1).split()
    with gpiochip.FakePi("pi4", persist=False) as fake:
        # Without the service a cycle refuses, before touching a pin.
        refused = run_on_the_pi(pi, fake, cron_cycle())
        assert refused.returncode != 0 and "relay hold service" in refused.stdout + refused.stderr
        assert all(line.direction == "in" for line in fake.lines().values())
        # The unit's ExecStart (systemd does not run on a simulated Pi: started by hand, same command, as root).
        command, environment = on_the_pi(pi, fake, exec_start)
        service = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            deadline = time.monotonic() + 30
            while pi.ssh("sudo test -S /var/lib/dreadpi/relay-hold.sock", check=False).returncode != 0:
                assert service.poll() is None, service.stdout.read()
                assert time.monotonic() < deadline, "the relay hold service never opened its socket"
                time.sleep(0.2)
            result = run_on_the_pi(pi, fake, cron_cycle())
            assert result.returncode == 0, result.stdout + result.stderr
            assert " drm2 " in result.stdout
            lines = fake.lines()
            assert (lines[GPIO17].direction, lines[GPIO17].level, lines[GPIO17].consumer) == \
                ("out", 1, "dreadpi-relay-hold"), lines[GPIO17]
            assert (lines[GPIO27].direction, lines[GPIO27].level) == ("out", 0)
            assert lines[GPIO17].used and lines[GPIO27].used  # held by the service, not released
        finally:
            service.terminate()
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()


def test_report_what_this_module_cost():
    # Not an assertion: the timings, for the README and CI budgets (shown with pytest -rP).
    print(json.dumps({key: round(value, 1) for key, value in TIMES.items()}))
