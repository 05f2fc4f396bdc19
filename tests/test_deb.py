"""The Debian package (packaging/build_deb.py, `make deb`): reproducible, the same from dpkg-deb and from the Python
writer, lintian-clean, and installed, upgraded, downgraded, removed and purged with apt on the simulated Pis' root
filesystems (bookworm's Python 3.11 and trixie's 3.13), plus the README's install path without Ansible.

The builder runs under Debian's /usr/bin/python3 -I, as on a controller or a Pi: the standard library only. Each
chroot step runs in a fresh private mount, PID and network namespace (no network: apt must resolve offline), over an
overlay of the cached rootfs whose upper directory keeps the Pi's state between steps; when the step's process
ends its mounts end with it, so cleanup is one directory removal, also on failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple

import pytest

from tests.conftest import REPO, require_root

BUILDER = REPO / "packaging" / "build_deb.py"
PYTHON = "/usr/bin/python3"
JSON_KEYS = ["path", "version", "build", "written"]
COMMAND = "/usr/bin/dreadpi"
CONFIG = "/etc/dreadpi/dreadpi.cfg"
EXAMPLE = "/usr/share/doc/dreadpi/examples/dreadpi.cfg"
COLLECTOR = "/usr/local/sbin/solar-watts"
DEBS = "/mnt/debs"  # where a chroot sees the built packages (read-only)
SOURCE = "/mnt/source"  # and a copy of the checkout (read-only)
# What a Pi that had the role and older tarball installs has; purge removes all of it.
ROLE_LEFTOVERS = ("/etc/cron.d/dreadpi", "/etc/logrotate.d/dreadpi", "/usr/local/bin/dreadpi",
                  "/usr/local/lib/dreadpi/0.0.9/dreadpi/__init__.py", "/usr/local/lib/dreadpi/collectors/sun-curve",
                  "/etc/systemd/system/dreadpi-relay-hold.service", "/etc/systemd/system/dreadpi-mqtt-listen.service",
                  "/etc/dreadpi/mqtt-ca.pem")
WANTS = ("/etc/systemd/system/multi-user.target.wants/dreadpi-relay-hold.service",
         "/etc/systemd/system/multi-user.target.wants/dreadpi-mqtt-listen.service")


class Built(NamedTuple):
    """One build: the JSON line's fields and the .deb's bytes."""

    info: dict
    deb: bytes

    @property
    def path(self) -> Path:
        return Path(self.info["path"])


def run_builder(*args: str, source: Path = REPO, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """packaging/build_deb.py from `source` (a checkout or a copy of one), under Debian's python3 -I."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run([PYTHON, "-I", str(source / "packaging" / "build_deb.py"), *args], capture_output=True,
                          text=True, env=environment, timeout=120)


def build(output: Path, *args: str, source: Path = REPO, env: Dict[str, str] | None = None) -> Built:
    done = run_builder("--output", str(output), *args, source=source, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {done.stdout!r}"
    info = json.loads(lines[0])
    return Built(info, Path(info["path"]).read_bytes())


def copy_source(destination: Path, version: str | None = None) -> Path:
    """The parts of a checkout the builder reads, optionally with another __version__."""
    for name in ("dreadpi", "packaging"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dreadpi.cfg.example", destination)
    if version is not None:
        init = destination / "dreadpi" / "__init__.py"
        init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    return destination


def ar_members(deb: bytes) -> List[tuple]:
    """(name, header, data) of each member of a deb's ar archive, read by hand (no dpkg needed)."""
    assert deb.startswith(b"!<arch>\n")
    members, offset = [], 8
    while offset < len(deb):
        header = deb[offset:offset + 60]
        size = int(header[48:58])
        members.append((header[:16].decode().rstrip(), header, deb[offset + 60:offset + 60 + size]))
        offset += 60 + size + size % 2
    return members


def tar_entries(compressed: bytes) -> Dict[str, tuple]:
    """{name: (type, mode, uid, gid, uname, gname, mtime, content)} of a gzip'd tar member; tarfile names a
    directory without its trailing slash ("./usr")."""
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(zlib.decompress(compressed, 16 + zlib.MAX_WBITS))) as archive:
        for info in archive:
            handle = archive.extractfile(info) if info.isfile() else None
            entries[info.name] = (info.type, info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime,
                                  handle.read() if handle else None)
    return entries


def member(deb: bytes, prefix: str) -> bytes:
    return next(data for name, _, data in ar_members(deb) if name.startswith(prefix))


def data_files(deb: bytes) -> Dict[str, tuple]:
    return tar_entries(member(deb, "data.tar"))


def control_files(deb: bytes) -> Dict[str, tuple]:
    return tar_entries(member(deb, "control.tar"))


def control_fields(deb: bytes) -> Dict[str, str]:
    text = control_files(deb)["./control"][7].decode()
    return dict(re.findall(r"^([A-Za-z-]+): (.*)$", text, re.MULTILINE))


def repo_version() -> str:
    return re.search(r'__version__ = "([^"]+)"', (REPO / "dreadpi" / "__init__.py").read_text()).group(1)


def bumped(version: str) -> str:
    """A higher Debian version than `version`."""
    return f"{version}.1"


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dreadpi-deb-test-"))
    path.chmod(0o755)  # apt's _apt user reads the packages from here
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def deb(scratch: Path) -> Built:
    """The package from this checkout, by whichever builder `auto` picks."""
    return build(scratch / "debs")


@pytest.fixture(scope="module")
def upgrade(scratch: Path) -> Built:
    """The package from a copy of this checkout with a higher __version__."""
    source = copy_source(scratch / "bumped-source", bumped(repo_version()))
    return build(scratch / "debs", source=source)


@pytest.fixture(scope="module")
def rebuilt(scratch: Path) -> Built:
    """The same version from a changed checkout, as a developer's: another build id."""
    source = copy_source(scratch / "rebuilt-source")
    policy = source / "dreadpi" / "policy.py"
    policy.write_text(policy.read_text() + "# a developer's change, the version unchanged\n")
    return build(scratch / "debs" / "rebuilt", source=source)


# --- the builder ---------------------------------------------------------------------------------------------

def test_json_line_and_build_file(deb: Built) -> None:
    assert list(deb.info) == JSON_KEYS
    assert deb.info["version"] == repo_version()
    assert re.fullmatch(r"[0-9a-f]{16}", deb.info["build"])
    assert deb.info["written"] is True
    assert deb.path.is_absolute() and deb.path.name == f"dreadpi_{repo_version()}_all.deb"
    build_file = data_files(deb.deb)["./usr/lib/dreadpi/BUILD"]
    assert build_file[7] == f"{deb.info['version']} {deb.info['build']}\n".encode()


def test_build_twice_gives_the_same_bytes_and_writes_nothing(deb: Built, scratch: Path) -> None:
    before = os.stat(deb.path)
    again = build(deb.path.parent)
    assert again.info == {**deb.info, "written": False}
    after = os.stat(deb.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    elsewhere = build(scratch / "again")
    assert elsewhere.deb == deb.deb
    assert elsewhere.info["written"] is True


def test_python_and_dpkg_deb_builders_give_identical_packages(scratch: Path) -> None:
    if not shutil.which("dpkg-deb"):
        pytest.skip("no dpkg-deb here to compare with")
    python = build(scratch / "python", "--builder=python")
    dpkg = build(scratch / "dpkg-deb", "--builder=dpkg-deb")
    assert python.info["build"] == dpkg.info["build"]
    # Member by member first, so a difference says where it is; then the whole files, byte for byte.
    assert [name for name, _, _ in ar_members(python.deb)] == ["debian-binary", "control.tar.gz", "data.tar.gz"]
    assert [(n, h[16:48]) for n, h, _ in ar_members(python.deb)] == [(n, h[16:48]) for n, h, _ in
                                                                     ar_members(dpkg.deb)]
    assert control_files(python.deb) == control_files(dpkg.deb)
    assert data_files(python.deb) == data_files(dpkg.deb)
    assert python.deb == dpkg.deb


def test_auto_without_dpkg_deb_writes_the_package_itself(deb: Built, scratch: Path) -> None:
    """A macOS controller has no dpkg-deb: auto must fall back to the Python writer, with the same result."""
    bare = scratch / "bare-path"
    bare.mkdir()
    bare.joinpath("python3").symlink_to(PYTHON)
    built = build(scratch / "no-dpkg", env={"PATH": str(bare)})
    assert built.deb == deb.deb


def test_source_date_epoch_sets_every_mtime(scratch: Path) -> None:
    built = build(scratch / "epoch", env={"SOURCE_DATE_EPOCH": "1700000000"})
    for files in (data_files(built.deb), control_files(built.deb)):
        assert {entry[6] for entry in files.values()} == {1700000000}
    assert all(b"1700000000  " in header for _, header, _ in ar_members(built.deb))


def test_contents(deb: Built) -> None:
    files = data_files(deb.deb)
    names = set(files)
    program = {name for name, entry in files.items()
               if name.startswith("./usr/lib/dreadpi/dreadpi/") and entry[0] != tarfile.DIRTYPE}
    sources = {f"./usr/lib/dreadpi/{path.relative_to(REPO).as_posix()}" for path in (REPO / "dreadpi").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert program == sources
    assert not [name for name in names if "__pycache__" in name or name.endswith((".pyc", ".pyo"))]
    for name in ("./usr/bin/dreadpi", "./usr/share/dreadpi/logrotate", "./usr/share/doc/dreadpi/copyright",
                 "./usr/share/doc/dreadpi/changelog.gz", "./usr/share/man/man1/dreadpi.1.gz", "./var/lib/dreadpi",
                 "./var/log/dreadpi", "./usr/share/doc/dreadpi/examples/dreadpi.cfg"):
        assert name in names, name
    # The role owns these: if the package shipped them, dpkg would ask about them on every upgrade.
    # The logrotate config too: postinst writes it where it is missing, and the role rewrites it.
    assert not [name for name in names if name.startswith("./etc/")]
    for name, (kind, mode, uid, gid, uname, gname, _, _) in files.items():
        assert (uid, gid, uname, gname) == (0, 0, "root", "root"), name
        expected = 0o755 if kind == tarfile.DIRTYPE or name == "./usr/bin/dreadpi" else 0o644
        assert mode == expected, name
    assert list(files) == sorted(files, key=lambda n: n.split("/")), "entries are not in sorted order"
    command = files["./usr/bin/dreadpi"][7].decode()
    assert command.startswith("#!/usr/bin/python3 -I\n")
    assert 'sys.path.append("/usr/lib/dreadpi")' in command and "from dreadpi.cli import entry" in command
    rotate = files["./usr/share/dreadpi/logrotate"][7].decode()
    for line in ("weekly", "rotate 12", "missingok", "notifempty", "compress", "delaycompress",
                 "create 0644 root root", "/var/log/dreadpi/error.log /var/log/dreadpi/plot.log {"):
        assert line in rotate, line


def test_control(deb: Built) -> None:
    control = control_files(deb.deb)
    # No conffiles: nothing the role rewrites may make dpkg ask on an upgrade.
    assert sorted(control) == [".", "./control", "./md5sums", "./postinst", "./postrm", "./prerm"]
    fields = control_fields(deb.deb)
    assert fields["Package"] == "dreadpi" and fields["Version"] == repo_version()
    assert fields["Architecture"] == "all"
    assert fields["Depends"] == "python3 (>= 3.9), cron | cron-daemon, logrotate"
    assert fields["Recommends"] == "python3-requests"
    assert "python3-rpi-lgpio | python3-rpi.gpio" in fields["Suggests"]
    files = data_files(deb.deb)
    sums = dict(line.split("  ", 1)[::-1] for line in control["./md5sums"][7].decode().splitlines())
    regular = {name[2:]: entry[7] for name, entry in files.items() if entry[7] is not None}
    assert set(sums) == set(regular)
    for path, digest in sums.items():
        assert hashlib.md5(regular[path]).hexdigest() == digest, path  # noqa: S324
    for script in ("./postinst", "./prerm", "./postrm"):
        assert control[script][1] == 0o755
        subprocess.run(["sh", "-n"], input=control[script][7], check=True)


@pytest.mark.parametrize("changed_file", ["dreadpi/policy.py", "packaging/debian/postinst"])
def test_a_changed_source_file_changes_the_build_id(deb: Built, scratch: Path, changed_file: str) -> None:
    source = copy_source(scratch / f"changed-{Path(changed_file).name}")
    path = source / changed_file
    path.write_text(path.read_text() + "# a local change\n")
    changed = build(scratch / f"changed-{Path(changed_file).name}-deb", source=source)
    assert changed.info["version"] == deb.info["version"]
    assert changed.info["build"] != deb.info["build"]
    assert data_files(changed.deb)["./usr/lib/dreadpi/BUILD"][7] == \
        f"{deb.info['version']} {changed.info['build']}\n".encode()


def test_a_missing_version_is_named(scratch: Path) -> None:
    source = copy_source(scratch / "no-version")
    (source / "dreadpi" / "__init__.py").write_text('"""dreadpi."""\n')
    done = run_builder("--output", str(scratch / "none"), source=source)
    assert done.returncode == 1 and done.stdout == ""
    assert "__init__.py has no __version__" in done.stderr


def test_a_version_debian_cannot_order_is_refused(scratch: Path) -> None:
    source = copy_source(scratch / "bad-version", "1.0-rc1")
    done = run_builder("--output", str(scratch / "none"), source=source)
    assert done.returncode == 1 and done.stdout == ""
    assert "'1.0-rc1' is not a Debian version" in done.stderr


def test_a_missing_dpkg_deb_or_a_bad_source_date_epoch_is_named(scratch: Path) -> None:
    bare = scratch / "bare-path-2"
    bare.mkdir()
    bare.joinpath("python3").symlink_to(PYTHON)
    done = run_builder("--builder=dpkg-deb", "--output", str(scratch / "none"), env={"PATH": str(bare)})
    assert done.returncode == 1 and done.stdout == ""
    assert "no dpkg-deb on PATH" in done.stderr
    done = run_builder("--output", str(scratch / "none"), env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert done.returncode == 1 and "SOURCE_DATE_EPOCH must be a number of seconds" in done.stderr
    assert not (scratch / "none").exists()


def test_lintian_reports_no_errors_or_warnings(deb: Built) -> None:
    if not shutil.which("lintian"):
        require_root()
        from tests import debian

        debian.install(["lintian"])
    done = subprocess.run(["lintian", "--display-level", ">=warning", str(deb.path)], capture_output=True, text=True,
                          timeout=300)
    findings = [line for line in done.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert findings == [], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


# --- on the simulated Pis' root filesystems --------------------------------------------------------------------

class Chroot:
    """An overlay of a cached rootfs; each run() is a fresh private mount, PID and network namespace (no network),
    with the built packages read-only at /mnt/debs and a copy of the checkout at /mnt/source, so no mount outlives
    the step, even when it fails."""

    def __init__(self, lower: Path, workdir: Path, debs: Path, source: Path) -> None:
        self.lower, self.debs, self.source = lower, debs, source
        self.upper, self.work, self.merged = workdir / "upper", workdir / "work", workdir / "merged"
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True)

    def run(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        merged = self.merged
        script = "\n".join([
            "set -e",
            "mount --make-rprivate /",
            f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.upper},workdir={self.work} {merged}",
            f"mount -t proc proc {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            f"mkdir -p {merged}{DEBS}",
            f"mount --bind -o ro {self.debs} {merged}{DEBS}",
            f"mkdir -p {merged}{SOURCE}",
            f"mount --bind -o ro {self.source} {merged}{SOURCE}",
            f"exec chroot {merged} /bin/sh -c {shlex.quote('set -e; ' + command)}",
        ])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8",
               "TZ": "UTC"}
        # stdin is /dev/null: a question from dpkg fails the step instead of waiting for an answer.
        done = subprocess.run(["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "sh", "-c", script],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"{command!r} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def exists(self, path: str) -> bool:
        return bool(self.existing(path))

    def existing(self, *paths: str) -> List[str]:
        """Those of `paths` that exist (a dangling symlink too), in one step."""
        quoted = " ".join(shlex.quote(path) for path in paths)
        return self.run(f'for p in {quoted}; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done').stdout.split()

    def apt(self, *args: str) -> subprocess.CompletedProcess:
        """apt-get as a person runs it; dpkg skips its fsyncs (--force-unsafe-io), which a throw-away overlay on a
        busy disk makes the slowest part of the test, and which change nothing dpkg leaves on disk."""
        return self.run("apt-get -y -q -o Dpkg::Options::=--force-unsafe-io "
                        + " ".join(shlex.quote(arg) for arg in args))

    def installed(self) -> str:
        """The package's dpkg status and version, e.g. "ii 0.1.0", "rc 0.1.0", or "" when dpkg knows nothing."""
        done = self.run("dpkg-query -W -f '${db:Status-Abbrev} ${Version}' dreadpi", check=False)
        return " ".join(done.stdout.split()) if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def source_copy(scratch: Path) -> Path:
    return copy_source(scratch / "source")


@pytest.fixture
def pi(request: pytest.FixtureRequest, scratch: Path, deb: Built, source_copy: Path) -> Iterator[Chroot]:
    from tests.fleet.simpi import ensure_host_tools, rootfs

    require_root()
    ensure_host_tools()
    workdir = Path(tempfile.mkdtemp(prefix=f"chroot-{request.param}-", dir=scratch))
    try:
        yield Chroot(rootfs(request.param), workdir, deb.path.parent, source_copy)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_config(pi: Chroot, collector_output: str = "550") -> None:
    """As the README says: the example config, 0600 root, with the script collector and sim relays."""
    pi.run(f"printf '#!/bin/sh\\necho {collector_output}\\n' > {COLLECTOR} && chmod 0755 {COLLECTOR}")
    pi.run(f"install -m 0600 {EXAMPLE} {CONFIG} && "
           f"sed -i 's|^command = .*|command = {COLLECTOR}|; s|^backend = .*|backend = sim|' {CONFIG}")


def assert_installed(pi: Chroot, built: Built) -> None:
    version = built.info["version"]
    assert pi.installed() == f"ii {version}"
    report = pi.run(f"cat /usr/lib/dreadpi/BUILD; {COMMAND} --version; echo \"[$(dpkg --verify dreadpi)]\"; "
                    "python3 -c 'import sys; print(sys.implementation.cache_tag)'; "
                    "find /usr/lib/dreadpi -name '*.pyc'; echo --; find /usr/lib/dreadpi -name '*.py'").stdout
    build_file, command, verify, tag, files = report.split("\n", 4)
    pycs, _, sources = (part.split() for part in files.partition("--"))
    assert build_file == f"{version} {built.info['build']}"
    assert command == f"dreadpi {version}"
    assert verify == "[]"  # every file as its md5sums say
    # Byte-compiled by postinst for this Python only: one .pyc per module, nothing left of another version's.
    assert sources and len(pycs) == len(sources) and all(path.endswith(f".{tag}.pyc") for path in pycs)


SUITES = pytest.mark.parametrize("pi", ["bookworm", "trixie"], indirect=True)


@SUITES
def test_the_builder_on_a_pi_gives_the_same_bytes(pi: Chroot, deb: Built) -> None:
    """Pull mode builds on the Pi with Debian's python3 (3.11, 3.13) and its own dpkg-deb (1.21, 1.22): both
    builders there must give the package built here, byte for byte."""
    for builder in ("python", "dpkg-deb"):
        done = pi.run(f"python3 -I {SOURCE}/packaging/build_deb.py --source {SOURCE} --builder={builder} "
                      f"--output /tmp/{builder}")
        assert json.loads(done.stdout)["build"] == deb.info["build"]
        pi.run(f"cmp /tmp/{builder}/{deb.path.name} {DEBS}/{deb.path.name}")


@SUITES
def test_install_upgrade_downgrade_reinstall_remove_purge(pi: Chroot, deb: Built, upgrade: Built,
                                                          rebuilt: Built) -> None:
    pi.apt("install", f"{DEBS}/{deb.path.name}")
    assert_installed(pi, deb)
    # Log rotation, written by postinst where none is: not a conffile, so the role may rewrite it.
    packaged = data_files(deb.deb)["./usr/share/dreadpi/logrotate"][7].decode()
    assert pi.run("cat /etc/logrotate.d/dreadpi").stdout == packaged
    # As the role rewrites it: an upgrade, a downgrade and a reinstall below leave it and never ask about it.
    role_marker = (REPO / "roles/dreadpi/templates/logrotate.j2").read_text().splitlines()[0]
    rewritten = f"{role_marker}\n/var/log/dreadpi/error.log {{\n  daily\n}}\n"
    pi.run(f"printf '%s' {shlex.quote(rewritten)} > /etc/logrotate.d/dreadpi")
    assert pi.run("stat -c '%U %G %a' /etc/dreadpi /var/lib/dreadpi /var/log/dreadpi").stdout.split("\n")[:3] == \
        ["root root 755"] * 3
    write_config(pi)
    pi.run(f"{COMMAND} check-config {CONFIG}")
    pi.run(f"{COMMAND} run")

    pi.apt("install", f"{DEBS}/{upgrade.path.name}")
    assert_installed(pi, upgrade)
    pi.apt("install", "--allow-downgrades", f"{DEBS}/{deb.path.name}")
    assert_installed(pi, deb)
    # The same version, another build: apt skips a version that is installed, unless told to reinstall.
    assert rebuilt.info["version"] == deb.info["version"] and rebuilt.info["build"] != deb.info["build"]
    pi.apt("install", f"{DEBS}/rebuilt/{rebuilt.path.name}")
    assert_installed(pi, deb)
    pi.apt("install", "--reinstall", f"{DEBS}/rebuilt/{rebuilt.path.name}")
    assert_installed(pi, rebuilt)
    pi.run(f"{COMMAND} run && {COMMAND} status | grep -q drm3")
    assert pi.run("cat /etc/logrotate.d/dreadpi").stdout == rewritten
    assert not pi.existing("/etc/logrotate.d/dreadpi.dpkg-new", "/etc/logrotate.d/dreadpi.dpkg-dist")

    pi.apt("remove", "dreadpi")
    assert pi.installed() == f"rc {deb.info['version']}"
    assert pi.existing("/usr/bin/dreadpi", "/usr/lib/dreadpi") == []
    kept = (CONFIG, "/var/lib/dreadpi/state.json", "/var/log/dreadpi/plot.log", "/etc/logrotate.d/dreadpi")
    assert pi.existing(*kept) == list(kept), "remove took config, state or logs"

    leftovers = " ".join(ROLE_LEFTOVERS)
    pi.run(f"for f in {leftovers}; do mkdir -p $(dirname $f) && echo x > $f; done && mkdir -p "
           f"/etc/systemd/system/multi-user.target.wants && for w in {' '.join(WANTS)}; do "
           f"ln -s /etc/systemd/system/$(basename $w) $w; done && touch /etc/systemd/system/unrelated.service")
    # As where systemd runs: the role's units are stopped first (here systemctl cannot reach a systemd, and the
    # purge must go on regardless).
    pi.run("mkdir -p /run/systemd/system")
    pi.apt("purge", "dreadpi")
    assert pi.installed() == ""
    assert pi.existing(CONFIG, "/etc/dreadpi", "/var/lib/dreadpi", "/var/log/dreadpi", "/etc/logrotate.d/dreadpi",
                       "/usr/local/lib/dreadpi", *ROLE_LEFTOVERS, *WANTS) == [], "purge left these"
    # Not the system's other units, nor the administrator's own collector script.
    assert pi.existing("/etc/systemd/system/unrelated.service", COLLECTOR) == ["/etc/systemd/system/unrelated.service",
                                                                               COLLECTOR]


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Install the package without Ansible")
    return text[start:text.index("\n## ", start + 1)]


def readme_cron_file() -> str:
    """The /etc/cron.d/dreadpi the README tells a user to write."""
    block = re.search(r"```\n(# /etc/cron\.d/dreadpi\n.*?)```", readme_section(), re.DOTALL)
    assert block, "the README section has no /etc/cron.d/dreadpi block"
    return block.group(1)


def cron_jobs(text: str) -> List[tuple]:
    """(schedule, user, command) of each job in a cron.d file, checking each line is a comment, a variable or a
    job as Debian's cron reads them."""
    from dreadpi.cron import Schedule

    assert text.endswith("\n")
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"[A-Z_]+=\S", line):
            continue
        if line.startswith("@"):
            schedule, user, command = line.split(None, 2)
            assert schedule in ("@reboot", "@hourly", "@daily", "@weekly", "@monthly", "@yearly"), line
        else:
            fields = line.split(None, 6)
            assert len(fields) == 7, line
            schedule, user, command = " ".join(fields[:5]), fields[5], fields[6]
            Schedule(schedule)  # raises ValueError on a field cron would reject
        jobs.append((schedule, user, command))
    return jobs


@SUITES
def test_install_without_ansible_as_the_readme_says(pi: Chroot, deb: Built) -> None:
    section = readme_section()
    assert "sudo apt install ./dreadpi_" in section
    pi.apt("install", f"{DEBS}/{deb.path.name}")
    write_config(pi)
    assert pi.run(f"stat -c '%U %G %a' {CONFIG}").stdout.strip() == "root root 600"
    pi.run(f"{COMMAND} check-config {CONFIG}")
    cron = readme_cron_file()
    pi.run(f"cat > /etc/cron.d/dreadpi <<'EOF'\n{cron}EOF")
    pi.run("chmod 0644 /etc/cron.d/dreadpi")
    jobs = cron_jobs(cron)
    assert [user for _, user, _ in jobs] == ["root"] * len(jobs) and len(jobs) >= 1
    periodic = [command for schedule, _, command in jobs if not schedule.startswith("@")]
    assert len(periodic) == 1
    variables = dict(re.findall(r"^([A-Z_]+)=(\S+)$", cron, re.MULTILINE))
    assert "/usr/bin" in variables.get("PATH", "/usr/bin:/bin").split(":")
    # What cron would run: the job's command through /bin/sh, in cron's environment.
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())
    pi.run(f"env -i {exports} HOME=/root /bin/sh -c {shlex.quote(periodic[0])}")
    lastrun = pi.run("cat /var/log/dreadpi/lastrun.txt").stdout
    assert "drm3 (75%): 550 W" in lastrun, lastrun
    status = pi.run(f"{COMMAND} status").stdout
    assert "drm3" in status, status
    assert pi.run(f"{COMMAND} run").returncode == 0
    assert pi.run("logrotate -d /etc/logrotate.d/dreadpi 2>&1").returncode == 0
