#!/usr/bin/env python3
"""Build dreadpi_<version>_all.deb from this checkout, reproducibly, with or without dpkg-deb.

It runs wherever a controller runs (Debian, Ubuntu, macOS) and on a Pi itself, so it needs only the standard
library of Python >= 3.9. With dpkg-deb on PATH (`--builder=auto`) it lays the tree out and lets dpkg-deb pack it;
without, it writes the same ar archive and tar members itself. Both compress with gzip at level 9 through zlib:
dpkg-deb's gzip is a zlib stream, which Python's zlib module reproduces byte for byte, so the two builders give the
same bytes (tested). xz could not be matched: dpkg-deb's liblzma may use the multi-threaded encoder, whose block
layout Python's lzma module does not write. Another zlib (macOS's) may compress to other bytes; the build id below
does not depend on compression.

Reproducible: every mtime is SOURCE_DATE_EPOCH (default a constant), entries are sorted, owned by root:root with
fixed modes, and no bytecode ships (postinst compiles for the Pi's own Python). The .deb is written atomically, and
only when its bytes differ, so an unchanged checkout changes nothing.

Prints one JSON line: {"path": ..., "version": ..., "build": ..., "written": true|false}. `build` is the first 16 hex
digits of a sha256 over the files and the maintainer scripts; the package installs "<version> <build>" as
/usr/lib/dreadpi/BUILD, so a deploy can tell a changed checkout from an installed one even when the version did not
change.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

PACKAGE = "dreadpi"
HERE = Path(__file__).resolve().parent
DEBIAN_FILES = HERE / "debian"
# 2024-01-01 00:00:00 UTC: any constant will do; SOURCE_DATE_EPOCH overrides it.
DEFAULT_EPOCH = 1704067200
MAINTAINER = "dreadpi maintainers <dreadpi@example.org>"
PROGRAM_DIR = "usr/lib/dreadpi"
BUILD_FILE = f"{PROGRAM_DIR}/BUILD"
DOC_DIR = f"usr/share/doc/{PACKAGE}"
# None: the only file in /etc a dreadpi needs from its package is the logrotate config, and the Ansible role
# rewrites it from its variables; as a conffile, dpkg would then ask about it on an upgrade. postinst writes it
# from LOGROTATE when it is missing, and purge removes it.
CONFFILES: tuple = ()
LOGROTATE = "usr/share/dreadpi/logrotate"
# Directories the package owns though it ships nothing in them: the default state and log directories.
EMPTY_DIRS = ("var/lib/dreadpi", "var/log/dreadpi")
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
# A Debian version that is also a native package's (no hyphen): digits first, then letters, digits and . + ~
VERSION_PATTERN = re.compile(r"[0-9][A-Za-z0-9.+~]*")
GZIP_LEVEL = 9
DESCRIPTION = """\
Description: demand response enabling device (AS/NZS 4755) for a Raspberry Pi
 dreadpi turns a Raspberry Pi and a relay board into a Demand Response
 Enabling Device: every few minutes it reads how much the solar system is
 generating, chooses the air conditioner's demand response mode (DRM 0, 1, 2
 or 3 of AS/NZS 4755) and drives the relays that assert it, so the air
 conditioner's peak load follows the solar peak.
 .
 Every failure ends in one failsafe mode, a dead dreadpi leaves the
 appliance in normal operation, and the collectors that talk to the outside
 world run sandboxed. Cron runs the cycle: write /etc/dreadpi/dreadpi.cfg
 and /etc/cron.d/dreadpi (the Ansible role does both), which this package
 leaves alone.
"""
CONTROL_FIELDS = (
    ("Section", "admin"),
    ("Priority", "optional"),
    ("Architecture", "all"),
    ("Maintainer", MAINTAINER),
    ("Depends", "python3 (>= 3.9), cron | cron-daemon, logrotate"),
    ("Recommends", "python3-requests"),
    ("Suggests", "python3-rpi-lgpio | python3-rpi.gpio, python3-paho-mqtt, apprise, prometheus-node-exporter"),
)


class BuildError(Exception):
    """A problem with the source tree or the build, with a message for the person running `make deb`."""


class Entry(NamedTuple):
    """One member of a tar: a directory when data is None."""

    path: str
    mode: int
    data: Optional[bytes] = None


def read_version(source: Path) -> str:
    """The version from dreadpi/__init__.py, checked to be a valid version for a native Debian package."""
    init = source / PACKAGE / "__init__.py"
    try:
        text = init.read_text(encoding="utf-8")
    except OSError as err:
        raise BuildError(f"cannot read {init}: {err.strerror}") from None
    found = re.search(r"""^__version__\s*=\s*["']([^"']*)["']""", text, re.MULTILINE)
    if not found:
        raise BuildError(f'{init} has no __version__ = "X.Y.Z" line')
    version = found.group(1)
    if not VERSION_PATTERN.fullmatch(version):
        raise BuildError(f"{init}: __version__ {version!r} is not a Debian version for a native package "
                         "(a digit first, then only letters, digits and . + ~; write a pre-release as 1.0~rc1)")
    return version


def source_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else a constant: never the clock."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_EPOCH
    if not value.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {value!r}")
    return int(value)


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a name or timestamp (as `gzip -n`), through zlib exactly as dpkg-deb's gzip does."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def program_files(source: Path) -> List[Entry]:
    """The dreadpi package's .py files under /usr/lib/dreadpi: no bytecode, nothing else (it reads no data files;
    its sandboxed fetchers are .py files read as source)."""
    package = source / PACKAGE
    if not package.is_dir():
        raise BuildError(f"no {PACKAGE}/ package in {source}")
    found = []
    for directory, subdirs, files in os.walk(package):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(directory) / name
                relative = path.relative_to(source).as_posix()
                found.append(Entry(f"{PROGRAM_DIR}/{relative}", 0o644, path.read_bytes()))
    return found


def changelog(version: str, epoch: int) -> bytes:
    """A native package's changelog: one entry for this version, dated SOURCE_DATE_EPOCH, in English whatever
    the locale (RFC 5322 date)."""
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    t = time.gmtime(epoch)
    date = (f"{days[t.tm_wday]}, {t.tm_mday:02d} {months[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
    return (f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
            f"  * dreadpi {version}, packaged from the project's source tree.\n\n"
            f" -- {MAINTAINER}  {date}\n").encode()


def static_file(name: str) -> bytes:
    """One of the package's own files in packaging/debian/ (next to this script, whatever --source says)."""
    path = DEBIAN_FILES / name
    try:
        return path.read_bytes()
    except OSError as err:
        raise BuildError(f"cannot read {path}: {err.strerror}") from None


def payload(source: Path, version: str, epoch: int) -> List[Entry]:
    """Every file of the package but BUILD, which is made from these."""
    return [
        Entry("usr/bin/dreadpi", 0o755, static_file("dreadpi")),
        *program_files(source),
        Entry(LOGROTATE, 0o644, static_file("logrotate")),
        Entry(f"{DOC_DIR}/copyright", 0o644, static_file("copyright")),
        Entry(f"{DOC_DIR}/changelog.gz", 0o644, gzip_bytes(changelog(version, epoch))),
        Entry(f"{DOC_DIR}/examples/dreadpi.cfg", 0o644, (source / "dreadpi.cfg.example").read_bytes()),
        Entry(f"usr/share/lintian/overrides/{PACKAGE}", 0o644, static_file("lintian-overrides")),
        Entry(f"usr/share/man/man1/{PACKAGE}.1.gz", 0o644, gzip_bytes(static_file("dreadpi.1"))),
    ]


def build_id(files: List[Entry], version: str) -> str:
    """The first 16 hex digits of a sha256 over the sorted paths, modes and contents of the files, and of what
    installs them (the control fields but Installed-Size, conffiles, maintainer scripts, as DEBIAN/...): a change
    to any of them is a different build, even with the same version."""
    hashed = [*files, Entry("DEBIAN/control", 0o644, control_text(version, None).encode()),
              *(Entry(f"DEBIAN/{e.path}", e.mode, e.data) for e in scripts())]
    digest = hashlib.sha256()
    for entry in sorted(hashed):
        assert entry.data is not None
        digest.update(f"{entry.path}\0{entry.mode:o}\0{len(entry.data)}\0".encode())
        digest.update(entry.data)
    return digest.hexdigest()[:16]


def data_tree(files: List[Entry]) -> List[Entry]:
    """Files plus every directory above them and the empty ones, depth first with sorted names, as dpkg-deb
    walks a tree: "./", "./etc/", "./etc/logrotate.d/", ..."""
    directories = set()
    for path in [*EMPTY_DIRS, *(os.path.dirname(entry.path) for entry in files)]:
        parts = path.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    everything = [Entry(d, 0o755) for d in directories] + list(files)
    return [Entry(".", 0o755)] + sorted(everything, key=lambda e: e.path.encode().split(b"/"))


def installed_size(tree: List[Entry]) -> int:
    """KiB, as dpkg-gencontrol counts: each file rounded up to a KiB, one per directory."""
    return sum(1 if e.data is None else (len(e.data) + 1023) // 1024 for e in tree if e.path != ".")


def control_text(version: str, installed_kib: Optional[int]) -> str:
    """DEBIAN/control; without Installed-Size for the build id, which must be known before the tree is complete."""
    fields = [("Package", PACKAGE), ("Version", version), *CONTROL_FIELDS]
    if installed_kib is not None:
        fields.append(("Installed-Size", str(installed_kib)))
    return "".join(f"{name}: {value}\n" for name, value in fields) + DESCRIPTION


def scripts() -> List[Entry]:
    """The part of DEBIAN/ that is not made from the files: conffiles and the maintainer scripts."""
    conffiles = "".join(f"/{path}\n" for path in CONFFILES)
    return [*([Entry("conffiles", 0o644, conffiles.encode())] if conffiles else []),
            *(Entry(name, 0o755, static_file(name)) for name in MAINTAINER_SCRIPTS)]


def control_files(version: str, tree: List[Entry]) -> List[Entry]:
    """DEBIAN/: control, conffiles, md5sums (conffiles left out, as dh_md5sums does) and the maintainer scripts."""
    md5sums = "".join(f"{hashlib.md5(e.data, usedforsecurity=False).hexdigest()}  {e.path}\n"  # dpkg's format
                      for e in tree if e.data is not None and e.path not in CONFFILES)
    entries = [Entry("control", 0o644, control_text(version, installed_size(tree)).encode()),
               Entry("md5sums", 0o644, md5sums.encode()), *scripts()]
    return [Entry(".", 0o755)] + sorted(entries)


def tar_bytes(entries: List[Entry], epoch: int) -> bytes:
    """A GNU tar, byte for byte what dpkg-deb's `tar --format=gnu --owner=0 --group=0` writes for these entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo("./" if entry.path == "." else f"./{entry.path}")
            info.mtime, info.mode = epoch, entry.mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def ar_member(name: str, data: bytes, epoch: int) -> bytes:
    """One member of a deb's ar archive, with the header dpkg-deb writes (root, 0644, padded to even)."""
    header = f"{name:<16}{epoch:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def build_python(control: List[Entry], tree: List[Entry], epoch: int) -> bytes:
    """The deb, written here: debian-binary, control.tar.gz, data.tar.gz in an ar archive."""
    return (b"!<arch>\n" + ar_member("debian-binary", b"2.0\n", epoch)
            + ar_member("control.tar.gz", gzip_bytes(tar_bytes(control, epoch)), epoch)
            + ar_member("data.tar.gz", gzip_bytes(tar_bytes(tree, epoch)), epoch))


def stage(root: Path, entries: List[Entry], epoch: int) -> None:
    """Lay entries out under root with exact modes and mtimes (the umask and clock must not leak in)."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        path = root / entry.path
        if entry.data is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_bytes(entry.data)
    for entry in sorted(entries, reverse=True):  # children first: a directory's mtime is set after its files
        path = root / entry.path
        path.chmod(entry.mode)
        os.utime(path, (epoch, epoch))


def build_dpkg_deb(control: List[Entry], tree: List[Entry], epoch: int) -> bytes:
    """The deb, packed by dpkg-deb from a staged tree, gzip so the Python builder can match it."""
    with tempfile.TemporaryDirectory(prefix="dreadpi-deb-") as scratch:
        root = Path(scratch) / "root"
        stage(root, [e for e in tree if e.path != "."], epoch)
        stage(root / "DEBIAN", [e for e in control if e.path != "."], epoch)
        for directory in (root / "DEBIAN", root):
            directory.chmod(0o755)
            os.utime(directory, (epoch, epoch))
        output = Path(scratch) / "out.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        done = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", f"-z{GZIP_LEVEL}", "--build",
                               str(root), str(output)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise BuildError(f"dpkg-deb failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return output.read_bytes()


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write atomically (a temporary file renamed into place), and only when the bytes differ."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def choose_builder(requested: str) -> str:
    """dpkg-deb where it exists (auto), else the Python writer; an explicit dpkg-deb that is missing is an error."""
    if requested == "auto":
        return "dpkg-deb" if shutil.which("dpkg-deb") else "python"
    if requested == "dpkg-deb" and not shutil.which("dpkg-deb"):
        raise BuildError("--builder=dpkg-deb, but there is no dpkg-deb on PATH (apt install dpkg, or --builder=python)")
    return requested


def build(source: Path, output: Path, builder: str = "auto") -> Dict[str, object]:
    """Build the package from the checkout `source` into the directory `output`; returns the JSON line's fields."""
    version = read_version(source)
    epoch = source_epoch()
    files = payload(source, version, epoch)
    build = build_id(files, version)
    files.append(Entry(BUILD_FILE, 0o644, f"{version} {build}\n".encode()))
    tree = data_tree(files)
    control = control_files(version, tree)
    if choose_builder(builder) == "dpkg-deb":
        deb = build_dpkg_deb(control, tree, epoch)
    else:
        deb = build_python(control, tree, epoch)
    path = output.resolve() / f"{PACKAGE}_{version}_all.deb"
    written = write_if_changed(path, deb)
    return {"path": str(path), "version": version, "build": build, "written": written}


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: one JSON line on stdout, or one error line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(description="Build dreadpi_<version>_all.deb from a dreadpi checkout.")
    parser.add_argument("--builder", choices=("auto", "python", "dpkg-deb"), default="auto",
                        help="dpkg-deb if on PATH (auto), else the Python writer; both give the same bytes")
    parser.add_argument("--output", type=Path, help="directory for the .deb (default: build/ in the checkout)")
    parser.add_argument("--source", type=Path, default=HERE.parent,
                        help="the checkout whose dreadpi/ is packaged (default: this one)")
    args = parser.parse_args(argv)
    try:
        result = build(args.source, args.output or args.source / "build", args.builder)
    except (BuildError, OSError) as err:
        print(f"build_deb: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
