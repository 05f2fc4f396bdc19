"""Pull mode on simulated Pis (tests/fleet/simpi.py): two Pis, sim-pi-1 on Debian bookworm (ansible-core 2.14) and
sim-pi-2 on trixie (ansible-core 2.19), from a rootfs variant with Debian's ansible-core, git and gpg (a simulated Pi
cannot reach the archive, so the enrolment's apt finds them installed).

The fleet repository is this checkout's files plus a pull inventory (inventory/sim: per-Pi vault files, each
encrypted with that Pi's vault id), served by `git daemon` on the controller's side of the Pis' links only, started
here and stopped at the end, also on failure. The tests run in order on one fleet: enrolment (twice: idempotent),
the schedule, a signed commit reaching both Pis at their next run (the scheduled command run as cron runs it, without
the random delay), a run with nothing new changing nothing, an unsigned commit, a commit signed by an untrusted key
and an OpenPGP-signed commit, an invalid value refused by the Pi's check-config, the per-Pi vault ids, the status,
and no secret in any output. The unit tests at the end need no root: how `dreadpi status` shows the last pull.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, dreadpi, processes_with, require_root, write_config
from tests.fleet.simpi import Fleet, recap

PIS = ("sim-pi-1", "sim-pi-2")
SUITES = {"sim-pi-2": "trixie"}
EXTRA_PACKAGES = ("ansible-core", "git", "gpg")
VAULT_PASSWORDS = {name: f"pull0vault0{name.replace('-', '0')}0Pa55word" for name in PIS}
API_KEYS = {name: f"pull0api0key0{name.replace('-', '0')}0c0ffee" for name in PIS}
SECRETS = [*VAULT_PASSWORDS.values(), *API_KEYS.values()]
CHECKOUT = "/var/lib/dreadpi-pull/checkout"
PULL_CONFIG = "/etc/dreadpi/pull"
CRON_FILE = "/etc/cron.d/dreadpi-pull"
CONFIG = "/etc/dreadpi/dreadpi.cfg"
CRON_ENV = "env -i HOME=/root LOGNAME=root SHELL=/bin/sh PATH=/usr/sbin:/usr/bin:/sbin:/bin"
FLEET_VARS = """---
# The simulated fleet's settings; each Pi's API key is in its own vault file (vault id = the Pi's name).
dreadpi_relays_backend: sim
dreadpi_policy_min_dwell: 0
dreadpi_policy_threshold_low: {low}
dreadpi_policy_threshold_high: 700
dreadpi_collector_source: pvoutput
dreadpi_pvoutput_system_id: "12345"
dreadpi_pvoutput_timezone: Australia/Sydney
dreadpi_pvoutput_api_key: "{{{{ vault_dreadpi_pvoutput_api_key }}}}"
"""
OUTPUTS: list = []  # every controller-side playbook output, for the secrets check
VENV_BIN = Path(sys.executable).parent


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                               **(env or {})})
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


class FleetRepo:
    """The fleet repository: a work tree where commits are made (signed or not) and pushed to the bare repository
    that git daemon serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.served = root / "srv"
        self.keys = root / "keys"
        self.keys.mkdir()
        for name in ("trusted", "untrusted"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@dreadpi.test",
                            "-f", str(self.keys / name)], check=True)
        self.allowed_signers = [f"fleet-signer@dreadpi.test {(self.keys / 'trusted.pub').read_text().strip()}"]
        self.gnupg = root / "gnupg"
        self.gnupg.mkdir(mode=0o700)
        self.gpg_env = {"GNUPGHOME": str(self.gnupg)}
        subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                        "Fleet Signer <gpg-signer@dreadpi.test>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, env={**os.environ, **self.gpg_env})
        self.gpg_key = subprocess.run(["gpg", "--batch", "--armor", "--export"], check=True, capture_output=True,
                                      text=True, env={**os.environ, **self.gpg_env}).stdout

    def create(self, vault_files: dict) -> None:
        copy_project(self.work)
        inventory = self.work / "inventory/sim"
        (inventory / "group_vars/dreadpi").mkdir(parents=True)
        (inventory / "hosts.yml").write_text(json.dumps({"dreadpi": {"hosts": {name: {} for name in PIS}}}))
        self.set_threshold(400)
        for name, password_file in vault_files.items():
            vault = inventory / f"host_vars/{name}/vault.yml"
            vault.parent.mkdir(parents=True)
            vault.write_text(f"vault_dreadpi_pvoutput_api_key: {API_KEYS[name]}\n")
            subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-id", f"{name}@{password_file}",
                            "--encrypt-vault-id", name, str(vault)], check=True, capture_output=True)
        git("init", "-q", "-b", "main", cwd=self.work)
        self.commit("The fleet repository, signed", "trusted")
        self.served.mkdir()
        git("clone", "-q", "--bare", str(self.work), str(self.served / "fleet.git"), cwd=self.root)
        git("remote", "add", "origin", str(self.served / "fleet.git"), cwd=self.work)

    def set_threshold(self, low: int) -> None:
        (self.work / "inventory/sim/group_vars/dreadpi/vars.yml").write_text(FLEET_VARS.format(low=low))

    def commit(self, message: str, signer: str | None) -> str:
        """Commit everything: signed with the SSH key `signer` ("trusted", "untrusted"), "gpg", or None (unsigned);
        pushed when there is a remote. Returns the commit's id."""
        options = ["-c", "user.name=Installer", "-c", "user.email=installer@dreadpi.test"]
        if signer == "gpg":
            options += ["-c", "gpg.format=openpgp", "-c", "user.signingkey=gpg-signer@dreadpi.test"]
        elif signer:
            options += ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keys / signer}"]
        git("add", "-A", cwd=self.work)
        git(*options, "commit", "-q", *(["-S"] if signer else ["--no-gpg-sign"]), "-m", message,
            cwd=self.work, env=self.gpg_env)
        if (self.served / "fleet.git").exists():
            git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work).strip()


def copy_project(work: Path) -> None:
    """The fleet repository's files: this checkout's, as an installer's fleet repository holds them."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if name.startswith(("tests/", "data/")) or not source.is_file():
            continue
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


class GitDaemon:
    """git daemon serving `base` read-only on `addresses` (the controller's side of the Pis' links) only."""

    def __init__(self, base: Path, addresses: tuple) -> None:
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            self.port = probe.getsockname()[1]
        self.log = open(base.parent / "git-daemon.log", "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors", f"--base-path={base}",
             f"--port={self.port}", *(f"--listen={address}" for address in addresses), str(base)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((addresses[0], self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (base.parent / "git-daemon.log").read_text()
                    raise RuntimeError(f"git daemon did not start: {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the daemon and its per-connection children
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def world():
    require_root()
    scratch = Path(tempfile.mkdtemp(prefix="dreadpi-pull-"))
    daemon = None
    try:
        repo = FleetRepo(scratch)
        password_files = {}
        for name, password in VAULT_PASSWORDS.items():
            path = scratch / f"vault-pass-{name}"
            path.write_text(password + "\n")
            path.chmod(0o600)
            password_files[name] = path
        repo.create(password_files)
        fleet = Fleet(len(PIS), suites=SUITES, extra_packages=EXTRA_PACKAGES)
        gateways = {name: f"198.18.{fleet.octet}.{4 * index + 1}" for index, name in enumerate(PIS)}
        with fleet as running:
            daemon = GitDaemon(repo.served, tuple(gateways.values()))
            for pi in running.pis:
                pi.vars = {
                    "dreadpi_pull_url": f"git://{gateways[pi.name]}:{daemon.port}/fleet.git",
                    "dreadpi_pull_inventory": "inventory/sim/hosts.yml",
                    "dreadpi_pull_vault_password_file": str(password_files[pi.name]),
                    "dreadpi_pull_allowed_signers": repo.allowed_signers,
                    "dreadpi_pull_gpg_keys": [repo.gpg_key],
                }
            running.repo = repo
            running.scratch = scratch
            yield running
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        assert not processes_with(f"--base-path={scratch}"), "git daemon outlived the tests"


def enrol(fleet) -> subprocess.CompletedProcess:
    """pull-enroll.yml over SSH, each Pi with its own vars (written as the inventory's host_vars)."""
    host_vars = fleet.inventory.parent / "host_vars"
    host_vars.mkdir(exist_ok=True)
    for pi in fleet.pis:
        (host_vars / f"{pi.name}.yml").write_text(json.dumps(pi.vars))
    result = fleet.ansible("pull-enroll.yml", "--diff")
    OUTPUTS.append(result.stdout + result.stderr)
    return result


def scheduled(pi) -> str:
    """The command of the Pi's hourly cron entry."""
    lines = [line for line in pi.ssh(f"cat {CRON_FILE}").stdout.splitlines() if re.match(r"^\d", line)]
    assert len(lines) == 1, lines
    return " ".join(lines[0].split()[6:])


def pull(pi) -> int:
    """Run the Pi's scheduled command as cron would (root, cron's environment), without the random delay."""
    command = re.sub(r"--delay \d+", "--delay 0", scheduled(pi))
    return pi.ssh(f"sudo {CRON_ENV} /bin/sh -c {shlex.quote(command)}", check=False).returncode


def pull_all(fleet) -> dict:
    with ThreadPoolExecutor(len(fleet.pis)) as pool:
        return dict(zip((pi.name for pi in fleet.pis), pool.map(pull, fleet.pis), strict=True))


def record(pi) -> dict:
    return json.loads(pi.ssh("cat /var/lib/dreadpi/pull.json").stdout)


def config_facts(pi) -> str:
    """The config's checksum and modification time."""
    return pi.ssh(f"sudo stat -c '%Y' {CONFIG} && sudo sha256sum {CONFIG}").stdout


def threshold(pi) -> int:
    return int(re.search(r"^threshold_low = (\d+)$", pi.ssh(f"sudo cat {CONFIG}").stdout, re.MULTILINE).group(1))


def test_enrolment_installs_the_pull_and_changes_nothing_the_second_time(world):
    first = recap(enrol(world).stdout)
    assert set(first) == set(PIS)
    assert all(count["changed"] > 0 and count["failed"] == 0 for count in first.values()), first
    second = recap(enrol(world).stdout)
    assert all(count["changed"] == 0 and count["failed"] == 0 for count in second.values()), second
    for pi in world.pis:
        facts = pi.ssh(f"sudo stat -c '%U %G %a %n' {PULL_CONFIG} {PULL_CONFIG}/vault-password "
                       f"{PULL_CONFIG}/allowed_signers {PULL_CONFIG}/gitconfig {PULL_CONFIG}/gnupg "
                       f"{CRON_FILE} /etc/logrotate.d/dreadpi-pull /usr/local/sbin/dreadpi-pull").stdout.splitlines()
        assert f"root root 700 {PULL_CONFIG}" in facts
        assert f"root root 600 {PULL_CONFIG}/vault-password" in facts
        assert f"root root 644 {PULL_CONFIG}/allowed_signers" in facts
        assert f"root root 700 {PULL_CONFIG}/gnupg" in facts
        assert f"root root 644 {CRON_FILE}" in facts and "root root 644 /etc/logrotate.d/dreadpi-pull" in facts
        assert "root root 755 /usr/local/sbin/dreadpi-pull" in facts
        assert pi.ssh("sudo logrotate -d /etc/logrotate.d/dreadpi-pull", check=False).returncode == 0
        # Debian's packages, not pip's: ansible-core 2.14 on bookworm, 2.19 on trixie.
        version = pi.ssh("dpkg-query -W -f='${Version}' ansible-core").stdout
        assert version.startswith("2.19" if SUITES.get(pi.name) == "trixie" else "2.14"), version
        assert pi.ssh("dpkg-query -W -f='${Status}' git").stdout == "install ok installed"
        # The OpenPGP key is in the Pi's keyring, trusted fully (ultimately).
        keys = pi.ssh(f"sudo gpg --batch --homedir {PULL_CONFIG}/gnupg --with-colons --list-keys").stdout
        assert "gpg-signer@dreadpi.test" in keys and re.search(r"^pub:u:", keys, re.MULTILINE), keys


def test_the_schedule_is_hourly_at_a_minute_of_the_pis_own_with_a_random_delay(world):
    minutes = set()
    for pi in world.pis:
        cron = pi.ssh(f"cat {CRON_FILE}").stdout
        assert cron.endswith("\n")
        # Ansible's random filter with seed=inventory_hostname: a stable minute per Pi.
        minute = random.Random(pi.name).randrange(0, 60, 1)
        assert f"\n{minute} * * * * root /usr/local/sbin/dreadpi-pull --delay 600 >/dev/null 2>&1\n" in cron, cron
        assert "\n@reboot root /usr/local/sbin/dreadpi-pull --delay 600 >/dev/null 2>&1\n" in cron, cron
        assert re.fullmatch(r"[A-Za-z0-9_-]+", Path(CRON_FILE).name)  # cron ignores names with a dot
        minutes.add(minute)
    assert len(minutes) == 2  # sim-pi-1 and sim-pi-2 do not pull at the same minute
    # The delay is random: the command sleeps up to --delay seconds (the scheduled runs below use 0).
    command = world.pis[0].ssh("cat /usr/local/sbin/dreadpi-pull").stdout
    assert "random.SystemRandom().randint(0, delay)" in command


def test_the_first_signed_commit_deploys_each_pi(world):
    assert pull_all(world) == {name: 0 for name in PIS}
    head = git("rev-parse", "HEAD", cwd=world.repo.work).strip()
    for pi in world.pis:
        outcome = record(pi)
        assert (outcome["outcome"], outcome["commit"], outcome["reason"]) == ("ok", head, ""), outcome
        assert outcome["changed"] > 0
        assert threshold(pi) == 400
        # Each Pi decrypted its own vault file: its own API key is in its config (not printed here).
        own = pi.ssh(f"sudo grep -qxF 'api_key = {API_KEYS[pi.name]}' {CONFIG}", check=False)
        assert own.returncode == 0
        assert pi.ssh("sudo stat -c '%U %a' /etc/dreadpi/dreadpi.cfg").stdout.strip() == "root 600"


def signed_threshold_reaches_every_pi(world, low: int, signer: str, message: str) -> str:
    """Commit threshold_low = `low` signed by `signer`, pull on every Pi, check each applied it; the commit."""
    world.repo.set_threshold(low)
    head = world.repo.commit(message, signer)
    assert pull_all(world) == {name: 0 for name in PIS}
    for pi in world.pis:
        assert threshold(pi) == low
    return head


def test_a_signed_commit_reaches_both_pis_at_their_next_run(world):
    head = signed_threshold_reaches_every_pi(world, 350, "trusted", "Lower threshold_low to 350")
    for pi in world.pis:
        outcome = record(pi)
        assert (outcome["outcome"], outcome["commit"], outcome["changed"]) == ("ok", head, 1), outcome


def test_a_run_with_nothing_new_changes_nothing(world):
    before = {pi.name: config_facts(pi) for pi in world.pis}
    assert pull_all(world) == {name: 0 for name in PIS}
    for pi in world.pis:
        assert config_facts(pi) == before[pi.name]
        assert record(pi)["changed"] == 0
        log = pi.ssh("sudo cat /var/log/dreadpi/pull.log").stdout
        last = log.rsplit("==== ", 2)[-2]  # the last run's output
        assert re.search(rf"^{pi.name}\s*: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", last, re.MULTILINE), last


@pytest.mark.parametrize("signer", [None, "untrusted"], ids=["unsigned", "untrusted-key"])
def test_a_commit_not_signed_by_a_trusted_key_is_refused(world, signer):
    before = {pi.name: config_facts(pi) for pi in world.pis}
    last_good = {pi.name: record(pi)["last_ok"]["commit"] for pi in world.pis}
    low = 300 if signer is None else 310
    world.repo.set_threshold(low)
    head = world.repo.commit(f"Lower threshold_low to {low} ({signer or 'unsigned'})", signer)
    assert pull_all(world) == {name: 2 for name in PIS}
    for pi in world.pis:
        assert config_facts(pi) == before[pi.name]  # the config is untouched
        outcome = record(pi)
        assert outcome["outcome"] == "refused" and outcome["commit"] == head, outcome
        assert outcome["reason"] == f"commit {head[:12]} is not signed by a trusted key"
        assert outcome["last_ok"]["commit"] == last_good[pi.name]
        log = pi.ssh("sudo cat /var/log/dreadpi/pull.log").stdout
        assert "Failed to verify GPG signature of commit/tag" in log.rsplit("==== ", 2)[-2]
        assert f"refused: commit {head[:12]} is not signed by a trusted key" in log.rsplit("==== ", 1)[-1]
        status = pi.ssh("sudo dreadpi status").stdout
        assert re.search(rf"^pull +refused at \S+, commit {head[:12]}: commit {head[:12]} is not signed by a "
                         rf"trusted key; in place: the pull at \S+, commit {last_good[pi.name][:12]}$",
                         status, re.MULTILINE), status
    # Until a trusted key signs a newer commit, every run refuses it again.
    assert pull(world.pis[0]) == 2


def test_an_openpgp_signed_commit_by_a_trusted_key_is_applied(world):
    head = signed_threshold_reaches_every_pi(world, 340, "gpg", "threshold_low 340, signed with the OpenPGP key")
    for pi in world.pis:
        assert record(pi)["commit"] == head


def test_a_signed_commit_with_an_invalid_value_is_refused_by_check_config(world):
    before = {pi.name: config_facts(pi) for pi in world.pis}
    world.repo.set_threshold(900)
    head = world.repo.commit("threshold_low 900: above threshold_high", "trusted")
    assert pull_all(world) == {name: 1 for name in PIS}
    for pi in world.pis:
        assert config_facts(pi) == before[pi.name] and threshold(pi) == 340  # the last good config stays
        outcome = record(pi)
        assert outcome["outcome"] == "failed" and outcome["commit"] == head, outcome
        assert "policy.threshold_low: must be below threshold_high (700), got 900" in outcome["reason"], outcome
        status = pi.ssh("sudo dreadpi status").stdout
        assert re.search(r"^pull +failed at .*must be below threshold_high.*; in place: the pull at ", status,
                         re.MULTILINE), status
        assert json.loads(pi.ssh("sudo dreadpi status --json").stdout)["pull"]["outcome"] == "failed"
    # A good signed commit after it is applied again.
    world.repo.set_threshold(360)
    world.repo.commit("threshold_low 360", "trusted")
    assert pull_all(world) == {name: 0 for name in PIS}
    assert all(threshold(pi) == 360 and record(pi)["outcome"] == "ok" for pi in world.pis)
    assert re.search(r"^pull +ok at \S+, commit [0-9a-f]{12} \(1 changed\)$",
                     world.pis[0].ssh("sudo dreadpi status").stdout, re.MULTILINE)


def test_a_pi_can_decrypt_its_own_vault_file_and_no_other(world):
    vault_ids = {pi.name: f"{pi.name}@{PULL_CONFIG}/vault-password" for pi in world.pis}
    for pi in world.pis:
        for other in PIS:
            view = pi.ssh(f"cd /tmp && sudo ansible-vault view --vault-id {vault_ids[pi.name]} "
                          f"{CHECKOUT}/inventory/sim/host_vars/{other}/vault.yml", check=False)
            if other == pi.name:
                assert view.returncode == 0 and API_KEYS[other] in view.stdout
            else:
                assert view.returncode != 0 and API_KEYS[other] not in view.stdout + view.stderr
                assert "Decryption failed" in view.stderr, view.stderr
        # Nor does its config hold another Pi's key.
        others = [key for name, key in API_KEYS.items() if name != pi.name]
        assert pi.ssh(f"sudo grep -cF {shlex.quote(others[0])} {CONFIG}", check=False).stdout.strip() == "0"


def test_no_secret_in_any_output_log_record_or_command_line(world):
    assert OUTPUTS
    texts = list(OUTPUTS)
    for pi in world.pis:
        texts.append(pi.ssh("sudo cat /var/log/dreadpi/pull.log /var/lib/dreadpi/pull.json").stdout)
        texts.append(pi.ssh("sudo dreadpi status; sudo dreadpi status --json").stdout)
        texts.append(pi.ssh(f"sudo cat {CRON_FILE} /usr/local/sbin/dreadpi-pull").stdout)
        # ansible-pull's command line, as the log records it: the vault id names the password's file.
        log = pi.ssh("sudo cat /var/log/dreadpi/pull.log").stdout
        assert f"--vault-id {pi.name}@{PULL_CONFIG}/vault-password --limit {pi.name}" in log
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# No root needed: how `dreadpi status` shows the last pull.

def test_status_without_pull_mode_says_nothing_about_it(tmp_path):
    result = dreadpi("status", "-c", str(write_config(tmp_path)), "--json")
    assert json.loads(result.stdout)["pull"] is None
    assert "pull" not in dreadpi("status", "-c", str(write_config(tmp_path))).stdout


def test_status_shows_a_refused_pull_and_what_stays_in_place(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state/pull.json").write_text(json.dumps({
        "time": "2026-11-25T21:00:00+00:00", "outcome": "refused", "commit": "b" * 40, "changed": None,
        "reason": "commit bbbbbbbbbbbb is not signed by a trusted key",
        "last_ok": {"time": "2026-11-25T20:00:00+00:00", "commit": "a" * 40}}))
    text = dreadpi("status", "-c", str(cfg)).stdout
    assert ("pull      refused at 2026-11-25T21:00:00+00:00, commit bbbbbbbbbbbb: commit bbbbbbbbbbbb is not signed "
            "by a trusted key; in place: the pull at 2026-11-25T20:00:00+00:00, commit aaaaaaaaaaaa\n") in text
    assert json.loads(dreadpi("status", "-c", str(cfg), "--json").stdout)["pull"]["outcome"] == "refused"
    (tmp_path / "state/pull.json").write_text("{not json")
    assert "pull      unknown at ?: cannot read pull.json" in dreadpi("status", "-c", str(cfg)).stdout


def test_the_metrics_show_the_last_pull(root, world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"},
                                   "metrics": {"textfile_dir": str(world_dir / "prom")}})
    (world_dir / "state").mkdir()
    (world_dir / "state/pull.json").write_text(json.dumps({
        "time": "2026-11-25T21:00:00+10:00", "outcome": "failed", "commit": "c" * 40, "changed": None,
        "reason": "failed to validate: policy.threshold_low: must be below threshold_high (700), got 900",
        "last_ok": {"time": "2026-11-25T20:00:00+10:00", "commit": "a" * 40}}))
    result = dreadpi("run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    text = (world_dir / "prom/dreadpi.prom").read_text()
    assert "\ndreadpi_pull_ok 0\n" in text
    assert "\ndreadpi_pull_timestamp_seconds 1795604400\n" in text  # 2026-11-25 11:00 UTC
    assert "\ndreadpi_pull_last_ok_timestamp_seconds 1795600800\n" in text
    (world_dir / "state/pull.json").unlink()  # not enrolled: no pull series at all
    assert dreadpi("run", "-c", str(cfg)).returncode == 0
    assert "dreadpi_pull" not in (world_dir / "prom/dreadpi.prom").read_text()
