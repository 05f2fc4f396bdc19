"""Pull enrolment baked into an image: playbooks/image.yml with dreadpi_image_pull_enroll, on the arm64 stand-in
image (tests/fleet/piimage.py) in its variant with Debian's ansible-core and git, so the bake's apt has nothing to
fetch (a real bake fetches them; the test machine has no archive to reach).

The bake runs as an installer runs it: from the fleet repository's own checkout, with its pull inventory
(inventory/img) and the Pi's vault id, the Pi's vault password read from ~/.dreadpi-vault-pass-<pi> (HOME is a
scratch directory here). It bakes once under emulation (minutes there), looks inside the image, and runs the image's
own scheduled pull command in the image under emulation (chroot, qemu-user-static), against the signed
fleet repository served by `git daemon` on 127.0.0.1 only: what the image's first boot does, less the boot. That run
applies the Pi's own host_vars, one of them from its vault, which only the baked password can open. A second Pi's
bake, twice (the second changes nothing), runs natively on an amd64 root filesystem. git daemon is stopped, and the
image detached and removed, at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import processes_with, require_root
from tests.fleet.simpi import recap, task_results
from tests.test_pull import GitDaemon, copy_project, git

PI = "pi-attic"
VAULT_PASSWORD = "img0vault0pi0attic0Pa55word"
SECRET_COMMAND = "/bin/echo 612"  # in the Pi's own vault file: only its baked password opens it
PULL_CONFIG = "etc/dreadpi/pull"
CRON_FILE = "etc/cron.d/dreadpi-pull"
CRON_ENV = "env -i HOME=/root LOGNAME=root SHELL=/bin/sh PATH=/usr/sbin:/usr/bin:/sbin:/bin"
APT_TASK = "Install Debian's ansible-core and git (and gpg for OpenPGP keys), only the missing ones"
VENV_BIN = Path(sys.executable).parent
FLEET_VARS = """---
# The fleet's settings, no secret. The image bake applies these; the Pi's own host_vars come with its first pull.
dreadpi_relays_backend: sim
dreadpi_policy_min_dwell: 0
dreadpi_policy_threshold_low: 400
dreadpi_policy_threshold_high: 700
dreadpi_collector_source: script
dreadpi_script_command: "{{ vault_dreadpi_script_command | default('/bin/echo 550') }}"
"""
PULL_VARS = """---
dreadpi_pull_url: git://127.0.0.1:{port}/fleet.git
dreadpi_pull_allowed_signers:
  - "fleet-signer@dreadpi.test {key}"
"""
OUTPUTS: list = []


def signed_commit(work: Path, key: Path, message: str) -> str:
    git("add", "-A", cwd=work)
    git("-c", "user.name=Installer", "-c", "user.email=installer@dreadpi.test", "-c", "gpg.format=ssh",
        "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def bake_argv(world, settings: Path) -> list:
    """image.yml from the fleet repository's checkout, with --diff (a secret must not show in a diff either)."""
    return [str(VENV_BIN / "ansible-playbook"), "-i", "inventory/img/hosts.yml",
            "--vault-id", f"{PI}@{world['home']}/.dreadpi-vault-pass-{PI}", "playbooks/image.yml", "--diff",
            "-e", f"@{settings}"]


def bake_env(world) -> dict:
    """HOME is where the installer keeps each Pi's vault password file (~/.dreadpi-vault-pass-<pi>)."""
    return {**os.environ, "HOME": str(world["home"]), "ANSIBLE_CONFIG": str(world["work"] / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(world["scratch"] / "ansible-local")}


def bake(world) -> subprocess.CompletedProcess:
    """A bake of the image, in a private mount namespace (a crashed bake leaves no mount behind)."""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", *bake_argv(world, world["settings"])],
                            capture_output=True, text=True, env=bake_env(world), cwd=world["work"])
    OUTPUTS.append(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def world():
    require_root()
    from tests.fleet import piimage

    source = piimage.standin_image(pull=True)
    scratch = Path(tempfile.mkdtemp(prefix="dreadpi-pull-image-"))
    image = scratch / "pi.img"
    daemon = None
    try:
        keys, work, served, home = scratch / "keys", scratch / "work", scratch / "srv", scratch / "home"
        for path in (keys, served, home):
            path.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "trusted@dreadpi.test",
                        "-f", str(keys / "trusted")], check=True)
        password_file = home / f".dreadpi-vault-pass-{PI}"
        password_file.write_text(VAULT_PASSWORD + "\n")
        password_file.chmod(0o600)
        daemon = GitDaemon(served, ("127.0.0.1",))
        copy_project(work)
        inventory = work / "inventory/img"
        (inventory / "group_vars/dreadpi").mkdir(parents=True)
        (inventory / f"host_vars/{PI}").mkdir(parents=True)
        (inventory / "hosts.yml").write_text(json.dumps({"dreadpi": {"hosts": {PI: {}, "pi-other": {}}}}))
        (inventory / "group_vars/dreadpi/vars.yml").write_text(FLEET_VARS)
        (inventory / "group_vars/dreadpi/pull.yml").write_text(
            PULL_VARS.format(port=daemon.port, key=(keys / "trusted.pub").read_text().strip()))
        (inventory / f"host_vars/{PI}/vars.yml").write_text("dreadpi_policy_threshold_low: 420\n")
        vault = inventory / f"host_vars/{PI}/vault.yml"
        vault.write_text(f"vault_dreadpi_script_command: {SECRET_COMMAND}\n")
        subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-id", f"{PI}@{password_file}",
                        "--encrypt-vault-id", PI, str(vault)], check=True, capture_output=True)
        git("init", "-q", "-b", "main", cwd=work)
        head = signed_commit(work, keys / "trusted", "The fleet repository, signed")
        git("clone", "-q", "--bare", str(work), str(served / "fleet.git"), cwd=scratch)
        subprocess.run(["cp", "--sparse=always", str(source), str(image)], check=True)
        settings = scratch / "settings.json"
        settings.write_text(json.dumps({"dreadpi_image": str(image), "dreadpi_image_hostname": PI,
                                        "dreadpi_image_pull_enroll": True}))
        state = {"scratch": scratch, "work": work, "home": home, "settings": settings, "image": image,
                 "head": head, "port": daemon.port, "source_rootfs": piimage.arm64_pull_rootfs()}
        state["bake"] = bake(state)
        yield state
    finally:
        if daemon is not None:
            daemon.stop()
        piimage.detach(image)
        shutil.rmtree(scratch, ignore_errors=True)
        assert not processes_with(f"--base-path={scratch}"), "git daemon outlived the tests"


def test_the_bake_enrols_the_image(world):
    bake = world["bake"]
    assert bake.returncode == 0, bake.stdout[-6000:] + bake.stderr[-3000:]
    hosts = set(recap(bake.stdout)) - {"localhost"}
    assert len(hosts) == 1 and all(counts["failed"] == 0 for counts in recap(bake.stdout).values())
    assert task_results(bake.stdout, "Write this Pi's own vault password (root, 0600)") == {hosts.pop(): "changed"}
    # The image had ansible-core and git: the role asked apt for nothing (a real bake installs what is missing).
    assert set(task_results(bake.stdout, APT_TASK).values()) == {"skipping"}


def test_the_vault_password_is_never_printed(world):
    assert OUTPUTS
    for text in OUTPUTS:
        assert VAULT_PASSWORD not in text and SECRET_COMMAND not in text


def test_nothing_is_left_mounted_attached_or_running(world):
    assert str(world["image"]) not in subprocess.run(["losetup", "--list"], capture_output=True, text=True).stdout
    assert "dreadpi-image-" not in Path("/proc/self/mounts").read_text()
    rooted = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root").startswith(tempfile.gettempdir() + "/dreadpi-image-"):
                rooted.append(pid)
        except OSError:
            continue
    assert not rooted, f"processes left running in the image: {rooted}"


def owner_mode(root: Path, path: str) -> tuple:
    info = (root / path).lstat()
    return info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)


def test_inside_the_image(world):
    from tests.fleet.piimage import mounted

    with mounted(world["image"]) as root:
        assert owner_mode(root, PULL_CONFIG) == (0, 0, "0o700")
        assert owner_mode(root, f"{PULL_CONFIG}/vault-password") == (0, 0, "0o600")
        assert (root / PULL_CONFIG / "vault-password").read_text() == VAULT_PASSWORD + "\n"
        for name in ("allowed_signers", "gitconfig"):
            assert owner_mode(root, f"{PULL_CONFIG}/{name}") == (0, 0, "0o644")
        assert "fleet-signer@dreadpi.test ssh-ed25519 " in (root / PULL_CONFIG / "allowed_signers").read_text()
        assert owner_mode(root, f"{PULL_CONFIG}/gnupg") == (0, 0, "0o700")
        assert owner_mode(root, CRON_FILE) == (0, 0, "0o644")
        assert owner_mode(root, "etc/logrotate.d/dreadpi-pull") == (0, 0, "0o644")
        assert owner_mode(root, "usr/local/sbin/dreadpi-pull") == (0, 0, "0o755")
        # Hourly at the Pi's own minute, seeded by its name (Ansible's random filter), not by the bake's mount point.
        minute = random.Random(PI).randrange(0, 60, 1)
        cron = (root / CRON_FILE).read_text()
        assert f"\n{minute} * * * * root /usr/local/sbin/dreadpi-pull --delay 600 >/dev/null 2>&1\n" in cron, cron
        assert "\n@reboot root /usr/local/sbin/dreadpi-pull --delay 600 >/dev/null 2>&1\n" in cron, cron
        # The Pi's name, its inventory (the bake's, relative to the repository) and the URL, as pulls use them.
        command = (root / "usr/local/sbin/dreadpi-pull").read_text()
        assert f'NAME = "{PI}"\n' in command
        assert 'INVENTORY = "inventory/img/hosts.yml"' in command
        assert f'URL = "git://127.0.0.1:{world["port"]}/fleet.git"' in command
        # The bake's own, fleet-wide config is in place until the first pull brings the Pi's own.
        assert "threshold_low = 400\n" in (root / "etc/dreadpi/dreadpi.cfg").read_text()
        # Temporary things of the bake are gone: the service policy, and the resolver bound over the image's.
        assert not (root / "usr/sbin/policy-rc.d").exists()
        assert (root / "etc/resolv.conf").read_bytes() == (world["source_rootfs"] / "etc/resolv.conf").read_bytes()
        assert not (root / "var/lib/dreadpi/pull.json").exists()  # nothing pulled during the bake
        assert not (root / "var/lib/dreadpi-pull/checkout").exists()


def in_image(root: Path, command: str, timeout: float) -> subprocess.CompletedProcess:
    """`command` as root in the image under emulation, with cron's environment, in private mount and PID
    namespaces: whatever it mounts or leaves running ends with it, also on a timeout."""
    script = (f"mount --make-rprivate / && mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
              f"mount --rbind /sys {root}/sys && exec chroot {root} {CRON_ENV} /bin/sh -c {shlex.quote(command)}")
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout)


def test_the_images_scheduled_pull_applies_the_pis_own_part_under_emulation(world):
    """The first boot's pull, run as cron runs it (without the random delay), by the image's own ansible-core 2.14
    under qemu: it fetches the signed commit, checks its signature, decrypts the Pi's own vault file with the baked
    password and applies the Pi's host_vars with the dreadpi role."""
    from tests.fleet.piimage import mounted

    with mounted(world["image"]) as root:
        line = [line for line in (root / CRON_FILE).read_text().splitlines() if re.match(r"^\d", line)]
        command = re.sub(r"--delay \d+", "--delay 0", " ".join(line[0].split()[6:]))
        started = time.monotonic()
        result = in_image(root, f"{command}; echo rc=$?", timeout=1200)
        seconds = time.monotonic() - started
        log = (root / "var/log/dreadpi/pull.log").read_text() if (root / "var/log/dreadpi/pull.log").exists() else ""
        assert "rc=0" in result.stdout, result.stdout + result.stderr + log[-6000:]
        print(f"the pull in the image took {seconds:.0f} s under emulation", file=sys.stderr)
        outcome = json.loads((root / "var/lib/dreadpi/pull.json").read_text())
        assert (outcome["outcome"], outcome["commit"], outcome["reason"]) == ("ok", world["head"], ""), outcome
        assert outcome["changed"] > 0
        config = (root / "etc/dreadpi/dreadpi.cfg").read_text()
        assert "threshold_low = 420\n" in config  # the Pi's own host_vars
        assert f"command = {SECRET_COMMAND}\n" in config  # from its own vault, opened with the baked password
        assert owner_mode(root, "etc/dreadpi/dreadpi.cfg") == (0, 0, "0o600")
        assert f"--vault-id {PI}@/{PULL_CONFIG}/vault-password --limit {PI} playbooks/pull.yml" in log
        assert VAULT_PASSWORD not in log + result.stdout + result.stderr


def test_a_bake_for_another_pi_gets_that_pis_name_minute_password_and_keyring(world, tmp_path):
    """Another Pi's name gives its own --limit, vault id, password file and minute. Baked natively, through
    dreadpi_image_rootfs, into an overlay of the simulated Pis' amd64 bookworm rootfs with ansible-core, git and gpg
    (tests/test_pull.py's cached variant), as tests/test_image.py does for lgpio: the role's decisions are the
    architecture's own, and this costs seconds, not another bake under emulation. With an OpenPGP key, so the
    keyring is built by the image's own gpg in the chroot. Twice: the second changes nothing."""
    from tests.fleet import piimage, simpi

    simpi.ensure_host_tools()
    other, password = "pi-other", "img0vault0pi0other0Pa55word"
    password_file = world["home"] / f".dreadpi-vault-pass-{other}"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    gpg_env = {**os.environ, "GNUPGHOME": str(gnupg)}
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                    "Fleet Signer <gpg-signer@dreadpi.test>", "ed25519", "sign", "never"],
                   check=True, capture_output=True, env=gpg_env)
    gpg_key = subprocess.run(["gpg", "--batch", "--armor", "--export"], check=True, capture_output=True, text=True,
                             env=gpg_env).stdout
    # The key generation started an agent in that home, which pytest's kept tmp_path would keep alive.
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=True, capture_output=True, env=gpg_env)
    lines, merged = piimage.rootfs_namespace_script(simpi.rootfs(extra=("ansible-core", "git", "gpg")),
                                                    tmp_path / "rootfs")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"dreadpi_image_rootfs": str(merged), "dreadpi_image_hostname": other,
                                    "dreadpi_image_pull_enroll": True, "dreadpi_pull_gpg_keys": [gpg_key]}))
    play = shlex.join(bake_argv(world, settings))
    script = "\n".join([*lines, play, "echo '==== second bake'", f"exec {play}"])
    result = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                            capture_output=True, text=True, env=bake_env(world), cwd=world["work"], timeout=900)
    OUTPUTS.append(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    first, _, second = result.stdout.partition("==== second bake")
    assert any(counts["changed"] > 0 for counts in recap(first).values())
    assert all(counts["changed"] == 0 for counts in recap(second).values()), recap(second)
    assert password not in result.stdout + result.stderr
    upper = tmp_path / "rootfs/upper"
    assert owner_mode(upper, f"{PULL_CONFIG}/vault-password") == (0, 0, "0o600")
    assert (upper / PULL_CONFIG / "vault-password").read_text() == password + "\n"
    minute = random.Random(other).randrange(0, 60, 1)
    assert minute != random.Random(PI).randrange(0, 60, 1)
    assert f"\n{minute} * * * * root /usr/local/sbin/dreadpi-pull " in (upper / CRON_FILE).read_text()
    command = (upper / "usr/local/sbin/dreadpi-pull").read_text()
    assert f'NAME = "{other}"\n' in command and 'INVENTORY = "inventory/img/hosts.yml"' in command
    keys = subprocess.run(["gpg", "--batch", "--homedir", str(upper / PULL_CONFIG / "gnupg"), "--with-colons",
                           "--list-keys"], capture_output=True, text=True).stdout
    assert "gpg-signer@dreadpi.test" in keys and re.search(r"^pub:u:", keys, re.MULTILINE), keys
    assert not (upper / "usr/sbin/policy-rc.d").exists()


STANDIN_POSTINST = """#!/bin/sh
# A stand-in's postinst: records what the bake's service policy answers a package that would start a service.
set -e
if [ "$1" = configure ]; then
    answer=0
    /usr/sbin/policy-rc.d ansible-core start || answer=$?
    echo "$answer" > /var/lib/dreadpi-standin-policy
fi
"""


def standin_ansible_core(directory: Path) -> Path:
    """An empty package named ansible-core, whose postinst asks the service policy as a service's would."""
    root = directory / "ansible-core"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: ansible-core\nVersion: 2.14.18-0+dreadpi.standin\nArchitecture: all\n"
        "Maintainer: dreadpi tests <dreadpi-tests@localhost.invalid>\nSection: admin\nPriority: optional\n"
        "Description: stand-in for Debian's ansible-core (tests/test_pull_image.py)\n")
    (root / "DEBIAN/postinst").write_text(STANDIN_POSTINST)
    (root / "DEBIAN/postinst").chmod(0o755)
    deb = directory / "ansible-core_2.14.18-0+dreadpi.standin_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_a_bake_on_an_image_without_ansible_core_installs_exactly_that_with_apt(world, tmp_path):
    """The apt path of the role in the chroot, offline: the amd64 pull-mode rootfs with ansible-core purged (git and
    openssh-client stay) and, as its only archive, a flat repository on it holding a stand-in ansible-core. The bake
    must refresh the lists, install exactly ansible-core, and its postinst must find the bake's service policy
    refusing every start. What this does not prove: that the real ansible-core from Debian's archive installs in
    an arm64 image (the cached variant's build does that, by the same apt, outside image.yml)."""
    from tests.fleet import piimage, simpi
    from tests.fleet.debs import archive

    simpi.ensure_host_tools()
    other = "pi-other"
    password_file = world["home"] / f".dreadpi-vault-pass-{other}"
    password_file.write_text("img0vault0pi0other0Pa55word\n")
    password_file.chmod(0o600)
    repository = archive(tmp_path / "archive", [standin_ansible_core(tmp_path / "debs")])
    lines, merged = piimage.rootfs_namespace_script(simpi.rootfs(extra=("ansible-core", "git", "gpg")),
                                                    tmp_path / "rootfs")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"dreadpi_image_rootfs": str(merged), "dreadpi_image_hostname": other,
                                    "dreadpi_image_pull_enroll": True}))
    script = "\n".join([
        *lines,
        f"chroot {merged} dpkg --purge ansible-core >/dev/null",
        f"cp -r {repository} {merged}/var/tmp/standin-archive",
        f"echo 'deb [trusted=yes] file:/var/tmp/standin-archive ./' > {merged}/etc/apt/sources.list",
        f"rm -f {merged}/etc/apt/sources.list.d/*",
        f"exec {shlex.join(bake_argv(world, settings))}",
    ])
    result = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                            capture_output=True, text=True, env=bake_env(world), cwd=world["work"], timeout=900)
    OUTPUTS.append(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert set(task_results(result.stdout, APT_TASK).values()) == {"changed"}
    upper = tmp_path / "rootfs/upper"
    history = (upper / "var/log/apt/history.log").read_text().split("\n\n")[-1]
    installs = [line for line in history.splitlines() if line.startswith(("Install:", "Upgrade:", "Remove:"))]
    assert installs == ["Install: ansible-core:amd64 (2.14.18-0+dreadpi.standin)"] or \
        installs == ["Install: ansible-core:all (2.14.18-0+dreadpi.standin)"], history
    assert (upper / "var/lib/dreadpi-standin-policy").read_text() == "101\n"  # no service could start
    assert any(path.name.endswith("_Packages") for path in (upper / "var/lib/apt/lists").iterdir())  # refreshed
    assert not (upper / "usr/sbin/policy-rc.d").exists()
    assert (upper / PULL_CONFIG / "vault-password").exists()
