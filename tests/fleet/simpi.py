"""Simulated Raspberry Pis on this machine, reached by Ansible over real SSH.

Each Pi is a Debian root filesystem, bookworm or trixie (built once per suite with debootstrap and cached), seen
through its own overlay, with its own network namespace (a veth pair in 198.18.0.0/15, the range RFC 2544 reserves for
benchmark networks, so it can never be a real LAN) and sshd running as PID 1 of a private mount, UTS and PID
namespace. Every mount exists only inside that namespace, so killing one process removes the host's
processes and mounts together; teardown then deletes the network namespace and the scratch directory.
Like Raspberry Pi OS, each has a user `pi` with passwordless sudo.

The packages the dreadpi role installs are already in the cached rootfs, so the role (which refreshes the
package lists only when something is missing) never needs the network from inside a namespace. systemd is installed
as on Raspberry Pi OS, but not running (sshd is PID 1): the role enables units offline, as in an image.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DREADPI_TEST_CACHE", "/var/cache/dreadpi-tests"))
SUITE = "bookworm"  # the default; trixie is supported too (SUITES)
SUITES = ("bookworm", "trixie")
# Suites whose packages apt installs after a bare debootstrap: bookworm's debootstrap cannot order trixie's systemd
# after its pre-dependency libsystemd-shared, and trixie's cron and logrotate pull systemd in.
APT_AFTER_DEBOOTSTRAP = ("trixie",)
MIRROR = os.environ.get("DREADPI_TEST_MIRROR", "http://deb.debian.org/debian")
# What a Raspberry Pi OS Lite image has that the role relies on, plus what the role installs.
PACKAGES = ("python3", "python3-apt", "openssh-server", "sudo", "cron", "logrotate", "python3-requests",
            "ca-certificates", "systemd", "python3-paho-mqtt")
ROOTFS_SETUP = 1  # bump when the customisation below changes, to rebuild the cache
HOST_TOOLS = {"debootstrap": "debootstrap", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
              "ip": "iproute2", "unshare": "util-linux"}
PI_UID = 1000
# cgroup v1's CPU accounting controller: Fleet(cgroups=True) gives each Pi a cgroup here, to measure what a run
# costs the Pi (its sshd, every session, sudo and module) apart from the controller on the same cores.
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
EXAMPLE_VAULT_PASSWORD = "dreadpi-example"  # the example inventory's vault; its secrets are fake


class HarnessError(RuntimeError):
    pass


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(argv, **kwargs)
    except subprocess.CalledProcessError as err:
        raise HarnessError(f"{' '.join(argv)} failed ({err.returncode}): {err.stderr or err.stdout}") from None


def ensure_host_tools() -> None:
    """Install what the harness needs on this machine (CI starts from a fresh Debian)."""
    if os.geteuid() != 0:
        raise HarnessError("simulated Pis need root (network namespaces, mounts): run as root or with sudo")
    missing = sorted({package for tool, package in HOST_TOOLS.items() if not shutil.which(tool)})
    if missing:
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def cached_rootfs(arch: str, packages: tuple, setup: int, customise, note: str = "",  # noqa: ANN001
                  suite: str = SUITE, extra: tuple = ()) -> Path:
    """A debootstrap'd Debian `suite` root filesystem for `arch`, built once and cached under a key of everything
    that shapes it; `customise(path)` finishes it before it is marked complete. Built aside and renamed into place,
    so an interrupted build is never mistaken for a finished one. `extra` packages are installed by apt after
    debootstrap (whose resolver cannot configure some, e.g. bookworm's ansible-core), making a variant."""
    if suite not in SUITES:
        raise HarnessError(f"unsupported suite {suite!r}; choose one of {', '.join(SUITES)}")
    variant = f" + {' '.join(extra)}" if extra else ""
    key = hashlib.sha256(f"{suite} {arch} {' '.join(packages)} {setup}{variant}".encode()).hexdigest()[:12]
    path = CACHE / f"rootfs-{suite}-{arch}-{key}"
    if (path / ".dreadpi-complete").exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    print(f"building {path} with debootstrap (once; cached after){note}", file=sys.stderr, flush=True)
    late = suite in APT_AFTER_DEBOOTSTRAP
    include = [] if late else [f"--include={','.join(packages)}"]
    run("debootstrap", f"--arch={arch}", "--variant=minbase", *include, suite, str(building), MIRROR,
        capture_output=False, stdout=subprocess.DEVNULL)
    packages = (packages if late else ()) + tuple(extra)
    if packages:
        install = (f"mount --make-rprivate / && mount -t proc proc {building}/proc && "
                   f"mount --rbind /dev {building}/dev && chroot {building} apt-get install -y -q "
                   f"--no-install-recommends {' '.join(packages)}")
        run("unshare", "--mount", "sh", "-c", install, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    customise(building)
    run("chroot", str(building), "apt-get", "clean")
    return complete_rootfs(building, path)


def complete_rootfs(building: Path, path: Path) -> Path:
    """Move a root filesystem built in `building` to its cache `path`, marked complete. /run is a tmpfs on a
    booted system: nothing a package script left there may say "systemd is running"."""
    for leftover in (building / "run").iterdir():
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    (building / ".dreadpi-complete").write_text("")
    shutil.rmtree(path, ignore_errors=True)
    building.rename(path)
    return path


def _add_pi_user(root: Path) -> None:
    run("chroot", str(root), "useradd", "--create-home", "--uid", str(PI_UID), "--shell", "/bin/bash",
        "--groups", "sudo", "pi")
    sudoers = root / "etc/sudoers.d/010_pi-nopasswd"  # as Raspberry Pi OS ships it
    sudoers.write_text("pi ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def host_arch() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


def rootfs(suite: str = SUITE, extra: tuple = ()) -> Path:
    """The simulated Pis' rootfs of `suite`, for this machine's own architecture (about two minutes to build, once);
    `extra` packages make a variant, cached under its own key (e.g. ansible-core and git for pull mode)."""
    return cached_rootfs(host_arch(), PACKAGES, ROOTFS_SETUP, _add_pi_user, suite=suite, extra=tuple(extra))


def ansible_env(workdir: Path) -> dict:
    """The environment ansible-playbook runs with: the project's ansible.cfg, plain output, scratch in workdir."""
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp")}


def write_inventory(directory: Path, hosts: dict) -> Path:
    """hosts.yml for the group dreadpi, with the example inventory's group_vars (its vault included), and the
    example vault's password file; returns the hosts file."""
    import json

    directory.mkdir()
    # JSON is YAML: no YAML library needed here.
    (directory / "hosts.yml").write_text(json.dumps({"dreadpi": {"hosts": hosts}}, indent=2))
    (directory / "group_vars").symlink_to(REPO / "inventory/example/group_vars")
    password = directory / "vault-password"
    password.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    password.chmod(0o600)
    return directory / "hosts.yml"


def cpuacct_root() -> Path:
    """The cpuacct hierarchy, or a HarnessError saying it is missing (cgroup v2 alone has no cpuacct.usage)."""
    if not (CPUACCT / "cpuacct.usage").is_file():
        raise HarnessError(f"no cgroup v1 cpuacct controller mounted at {CPUACCT}: per-Pi CPU accounting needs it "
                           f"(mount -t cgroup -o cpuacct cpuacct {CPUACCT})")
    return CPUACCT


def remove_cgroup(path: Path, timeout: float = 5) -> None:
    """rmdir a cgroup once it is empty: killed processes leave it a moment after SIGKILL, and rmdir fails (EBUSY)
    until they have. Whatever is still in it after a second is killed."""
    started = time.monotonic()
    killed = False
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if time.monotonic() - started > timeout:
                raise HarnessError(f"cannot remove cgroup {path}: {err}") from None
        if not killed and time.monotonic() - started > 1:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
        time.sleep(0.05)


def adhoc_argv(inventory: Path, pattern: str, module: str, *args: str) -> list:
    """An ad-hoc `ansible` command line with the same inventory and vault password as playbook_argv."""
    binary = Path(sys.executable).parent / "ansible"
    return [str(binary), pattern, "-i", str(inventory), "--vault-password-file",
            str(inventory.parent / "vault-password"), "-m", module, *args]


def playbook_argv(inventory: Path, playbook: str, *args: str) -> list:
    binary = Path(sys.executable).parent / "ansible-playbook"
    return [str(binary), "-i", str(inventory), "--vault-password-file", str(inventory.parent / "vault-password"),
            str(REPO / "playbooks" / playbook), *args]


class SimPi:
    """One simulated Pi; start() brings it up, stop() removes every trace of it."""

    def __init__(self, fleet: Fleet, index: int, name: str, suite: str = SUITE) -> None:
        self.fleet = fleet
        self.index = index
        self.name = name
        self.suite = suite
        self.rootfs: Path | None = None
        self.netns = f"dpi{fleet.tag}-{index}"
        self.veth = f"dp{fleet.tag}h{index}"
        subnet = fleet.octet
        self.address = f"198.18.{subnet}.{4 * index + 2}"
        self.gateway = f"198.18.{subnet}.{4 * index + 1}"
        self.dir = fleet.workdir / name
        self.upper = self.dir / "upper"
        self.proc: subprocess.Popen | None = None
        # Its own cpuacct cgroup (Fleet(cgroups=True)): everything that runs on the Pi is accounted there.
        self.cgroup: Path | None = fleet.cgroup / name if fleet.cgroup is not None else None

    def start(self) -> None:
        work, merged = self.dir / "work", self.dir / "merged"
        for path in (self.upper, work, merged):
            path.mkdir(parents=True)
        ssh_dir = self.upper / "home/pi/.ssh"
        ssh_dir.mkdir(parents=True)
        (ssh_dir / "authorized_keys").write_text(self.fleet.public_key)
        for path, mode in ((self.upper / "home/pi", 0o755), (ssh_dir, 0o700), (ssh_dir / "authorized_keys", 0o600)):
            os.chown(path, PI_UID, PI_UID)
            path.chmod(mode)
        (self.upper / "etc").mkdir()
        (self.upper / "etc/hostname").write_text(self.name + "\n")
        (self.upper / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")

        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        run("ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
        run("ip", "-n", self.netns, "link", "set", "eth0", "up")
        run("ip", "-n", self.netns, "link", "set", "lo", "up")

        boot = "\n".join([
            "set -e",
            "mount --make-rprivate /",
            f"mount -t overlay overlay -o lowerdir={self.rootfs},upperdir={self.upper},workdir={work} {merged}",
            f"mount -t proc proc {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            f"mount --rbind /sys {merged}/sys",
            f"mount -t tmpfs -o mode=0755 tmpfs {merged}/run",
            f"mount -t tmpfs -o mode=1777 tmpfs {merged}/tmp",
            f"mkdir -p {merged}/run/sshd",
            f"hostname {self.name}",
            f"exec chroot {merged} /usr/sbin/sshd -D -e -o ListenAddress={self.address} "
            "-o PasswordAuthentication=no -o UseDNS=no -o MaxStartups=100",
        ])
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                "sh", "-c", boot]
        if self.cgroup is not None:
            # The first process joins the cgroup itself, then execs: nothing on the Pi can start outside it.
            self.cgroup.mkdir()
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"), *argv]
        log = open(self.dir / "sshd.log", "w")  # noqa: SIM115 (kept open for the life of the process)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_for_ssh()

    def _wait_for_ssh(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"{self.name}: sshd exited: {(self.dir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection((self.address, 22), timeout=1) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise HarnessError(f"{self.name}: no sshd on {self.address}:22 after {timeout:g} s")

    def ssh(self, command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a command on the Pi as pi (prefix `sudo` for root), over the same SSH Ansible uses."""
        return run("ssh", *self.fleet.ssh_options, "-i", str(self.fleet.key), f"pi@{self.address}", command,
                   check=check, **kwargs)

    def put(self, source: Path, destination: str, mode: str = "0644") -> None:
        """Copy a file from this machine to the Pi, root-owned (its directory is created)."""
        import shlex

        quoted = shlex.quote(destination)
        with open(source, "rb") as data:
            run("ssh", *self.fleet.ssh_options, "-i", str(self.fleet.key), f"pi@{self.address}",
                f"sudo mkdir -p \"$(dirname {quoted})\" && sudo tee {quoted} >/dev/null && sudo chmod {mode} {quoted}",
                stdin=data, text=False)

    def cpu_seconds(self) -> float:
        """CPU seconds everything on this Pi has used since it started (its cgroup's cpuacct.usage)."""
        if self.cgroup is None:
            raise HarnessError(f"{self.name}: no CPU accounting; start the fleet with Fleet(..., cgroups=True)")
        return int((self.cgroup / "cpuacct.usage").read_text()) / 1e9

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare, and with it PID 1 of the Pi: everything goes
            self.proc.wait(10)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)  # also removes the veth pair
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)


class Fleet:
    """A context manager bringing up `count` simulated Pis and an inventory for them."""

    def __init__(self, count: int, host_vars: dict | None = None, prefix: str = "sim-pi",
                 per_host: dict | None = None, suites: dict | None = None, cgroups: bool = False,
                 extra_packages: tuple = ()) -> None:
        self.count = count
        self.host_vars = host_vars or {}  # for every Pi
        self.per_host = per_host or {}  # name -> vars for that Pi
        self.suites = suites or {}  # name -> Debian suite of that Pi, if not bookworm
        self.extra_packages = tuple(extra_packages)  # in every Pi's rootfs (a variant, cached apart)
        self.prefix = prefix
        self.tag = f"{random.randrange(16 ** 4):04x}"
        self.octet = random.randrange(1, 255)
        self.cgroups = cgroups  # each Pi in its own cpuacct cgroup under self.cgroup (SimPi.cpu_seconds)
        self.cgroup: Path | None = None
        self.pis: list = []
        self.workdir = Path(tempfile.mkdtemp(prefix="dreadpi-fleet-"))
        self.key = self.workdir / "id_ed25519"
        self.ssh_options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]

    def __enter__(self) -> Fleet:
        try:
            ensure_host_tools()
            if self.cgroups:
                self.cgroup = cpuacct_root() / f"dreadpi-{self.tag}"
                self.cgroup.mkdir()
            self.rootfs = rootfs()  # the default suite's, also for tools that look inside
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dreadpi-fleet-test", "-f", str(self.key))
            self.public_key = (self.workdir / "id_ed25519.pub").read_text()
            for index in range(self.count):
                name = f"{self.prefix}-{index + 1}"
                pi = SimPi(self, index, name, self.suites.get(name, SUITE))
                pi.rootfs = rootfs(pi.suite, self.extra_packages)
                self.pis.append(pi)
                pi.start()
            self.inventory = write_inventory(self.workdir / "inventory", {pi.name: {
                "ansible_host": pi.address,
                "ansible_user": "pi",
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": " ".join(self.ssh_options),
                **self.host_vars,
                **self.per_host.get(pi.name, {}),
            } for pi in self.pis})
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        failures = []
        for pi in self.pis:
            try:
                pi.stop()
            except HarnessError as err:  # a cgroup left behind: stop the other Pis all the same
                failures.append(str(err))
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.cgroup is not None:
            try:
                remove_cgroup(self.cgroup)
            except HarnessError as err:
                failures.append(str(err))
        if failures:
            raise HarnessError("; ".join(failures))

    def ansible(self, playbook: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """ansible-playbook from this interpreter's environment, with the project's ansible.cfg."""
        result = subprocess.run(playbook_argv(self.inventory, playbook, *args), capture_output=True, text=True,
                                env=ansible_env(self.workdir), cwd=REPO)
        if check and result.returncode != 0:
            raise HarnessError(f"ansible-playbook {playbook} failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}")
        return result

    def adhoc(self, module: str, *args: str, pattern: str = "all", check: bool = True) -> subprocess.CompletedProcess:
        """An ad-hoc `ansible PATTERN -m MODULE` with the same inventory, ansible.cfg and environment as ansible()."""
        result = subprocess.run(adhoc_argv(self.inventory, pattern, module, *args), capture_output=True, text=True,
                                env=ansible_env(self.workdir), cwd=REPO)
        if check and result.returncode != 0:
            raise HarnessError(f"ansible -m {module} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result


def task_results(output: str, task: str) -> dict:
    """host -> "ok" | "changed" | "skipping" | "failed" ... for each run of the task named `task` (the words after
    "TASK [role : " in ansible-playbook's output; the last run wins)."""
    results: dict = {}
    for block in output.split("\nTASK [")[1:]:
        title, _, body = block.partition("]")
        if title.split(" : ", 1)[-1].strip() != task:
            continue
        for line in body.splitlines():
            word, _, rest = line.partition(": [")
            if word in ("ok", "changed", "skipping", "failed", "fatal") and rest:
                results[rest.split("]", 1)[0].split(" -> ")[0]] = word
    return results


def recap(output: str) -> dict:
    """host -> {"ok": n, "changed": n, ...} from the PLAY RECAP of ansible-playbook's output."""
    counts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        if ":" not in line or "=" not in line:
            continue
        host, _, rest = line.partition(":")
        counts[host.strip()] = {k: int(v) for k, v in (item.split("=") for item in rest.split())}
    return counts


def chroot_playbook(playbook: str, workdir: Path, host_vars: dict, runs: int = 1, lower: Path | None = None) -> list:
    """Run a playbook `runs` times against an overlay of the cached rootfs (or `lower`) through the chroot
    connection, as the image bake does; returns each run's CompletedProcess. The overlay and the pseudo-filesystems
    are mounted in a private mount namespace that ansible-playbook runs in, so nothing is mounted on the host;
    the overlay's upper directory (workdir/upper) keeps what the runs changed, for inspection."""
    ensure_host_tools()
    lower = lower or rootfs()
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    inventory = write_inventory(workdir / "inventory",
                                {str(merged): {"ansible_connection": "community.general.chroot", **host_vars}})
    play = " ".join(playbook_argv(inventory, playbook))
    results = []
    for _ in range(runs):
        script = "\n".join([
            "set -e",
            "mount --make-rprivate /",
            f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged}",
            f"mount -t proc proc {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            f"exec {play}",
        ])
        results.append(subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                                      capture_output=True, text=True, env=ansible_env(workdir), cwd=REPO))
    return results
