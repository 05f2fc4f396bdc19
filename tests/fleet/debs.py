"""Debian packages that stand in for the GPIO packages of Raspberry Pi OS and Debian, built here and cached.

The build machine cannot reach the Raspberry Pi OS archive, so the packages the role must recognise are made from
the same upstream releases on PyPI, laid out as their Debian packages are (modules in /usr/lib/python3/dist-packages)
and built with dpkg-deb:

- python3-lgpio: lgpio 0.2.2.0, from its manylinux x86_64 wheel for CPython 3.11: the real C library, so on an
  amd64 bookworm simulated Pi (Python 3.11) `import lgpio` works. Built for another architecture (arm64, for the
  image stand-in) the package installs, but its module is x86_64 code that cannot be imported there: only good for
  checking which packages the role keeps.
- python3-rpi-lgpio: rpi-lgpio 0.6 (pure Python). Depends on python3-lgpio; Conflicts with, Replaces and Provides
  python3-rpi.gpio, since both install the module RPi.GPIO.
- python3-rpi.gpio: Debian builds it for arm64 and armhf only, so an amd64 simulated Pi's archive has none; this
  one is RPi.GPIO 0.7.1 compiled from its source here (the same build the controller's venv uses).

archive() makes a flat apt repository of some of them, for a simulated Pi whose configured archive it is.
Nothing here needs network access once the cache is built (about 10 s the first time).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.fleet.simpi import CACHE, HarnessError, run

DEBS_SETUP = 1  # bump when the packaging below changes, to rebuild the cache
DIST_PACKAGES = "usr/lib/python3/dist-packages"
MAINTAINER = "dreadpi tests <dreadpi-tests@localhost.invalid>"
LGPIO = "lgpio==0.2.2.0"
RPI_LGPIO = "rpi-lgpio==0.6"
RPI_GPIO = "RPi.GPIO==0.7.1"
# The lgpio wheel on PyPI: CPython 3.11, glibc 2.34 or later, x86_64.
LGPIO_WHEEL = ("--only-binary=:all:", "--platform", "manylinux_2_34_x86_64", "--python-version", "3.11",
               "--implementation", "cp", "--abi", "cp311")
PYTHON_311 = "python3 (>= 3.11~), python3 (<< 3.12)"

PACKAGES = {
    "python3-lgpio": {
        "Source": "lg", "Version": "0.2.2.0-0~dreadpi1", "Depends": f"{PYTHON_311}, libc6 (>= 2.34)",
        "Homepage": "https://abyz.me.uk/lg/py_lgpio.html",
        "Description": "stand-in for Raspberry Pi OS's python3-lgpio (dreadpi tests)\n"
                       " lgpio 0.2.2.0 from its PyPI wheel for CPython 3.11 on x86_64.",
    },
    "python3-rpi-lgpio": {
        "Source": "rpi-lgpio", "Version": "0.6-0~dreadpi1", "Architecture": "all",
        "Depends": "python3:any, python3-lgpio", "Conflicts": "python3-rpi.gpio", "Replaces": "python3-rpi.gpio",
        "Provides": "python3-rpi.gpio", "Homepage": "https://rpi-lgpio.readthedocs.io/",
        "Description": "stand-in for Raspberry Pi OS's python3-rpi-lgpio (dreadpi tests)\n"
                       " rpi-lgpio 0.6: the RPi.GPIO API on the kernel's gpiochip device, through lgpio.",
    },
    "python3-rpi.gpio": {
        "Source": "rpi.gpio", "Version": "0.7.1-0~dreadpi1", "Depends": PYTHON_311,
        "Homepage": "https://sourceforge.net/projects/raspberry-gpio-python/",
        "Description": "stand-in for Debian's python3-rpi.gpio (dreadpi tests)\n"
                       " RPi.GPIO 0.7.1 compiled from source: register access through /dev/gpiomem.",
    },
}


def _pip(*args: str) -> None:
    run(sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet")


def _wheels(directory: Path, arch: str) -> dict:
    """package -> the wheel its files come from, fetched (or built) into `directory`."""
    _pip("download", "--no-deps", *LGPIO_WHEEL, "--dest", str(directory / "lgpio"), LGPIO)
    _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(directory / "rpi-lgpio"), RPI_LGPIO)
    wheels = {"python3-lgpio": directory / "lgpio", "python3-rpi-lgpio": directory / "rpi-lgpio"}
    if arch == "amd64":  # compiled for this machine: only a stand-in for an amd64 Pi
        _pip("wheel", "--no-deps", "--no-binary=:all:", "--wheel-dir", str(directory / "rpi-gpio"), RPI_GPIO)
        wheels["python3-rpi.gpio"] = directory / "rpi-gpio"
    found = {}
    for package, where in wheels.items():
        (wheel,) = where.glob("*.whl")
        found[package] = wheel
    return found


def _build(package: str, wheel: Path, arch: str, out: Path, scratch: Path) -> Path:
    fields = dict(PACKAGES[package])
    fields.setdefault("Architecture", arch)
    root = scratch / package
    target = root / DIST_PACKAGES
    target.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            # As Debian's Python packaging does: the modules and the dist-info, without pip's RECORD.
            if member.is_dir() or member.filename.endswith(".dist-info/RECORD"):
                continue
            path = target / member.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(member))
            path.chmod(0o644)
    for directory in [root, *root.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)
    size_kib = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) // 1024 + 1
    (root / "DEBIAN").mkdir()
    control = {"Package": package, "Source": fields.pop("Source"), "Version": fields.pop("Version"),
               "Architecture": fields.pop("Architecture"), "Maintainer": MAINTAINER,
               "Installed-Size": str(size_kib), "Section": "python", "Priority": "optional"}
    description = fields.pop("Description")
    control.update(fields)
    text = "".join(f"{key}: {value}\n" for key, value in control.items()) + f"Description: {description}\n"
    (root / "DEBIAN/control").write_text(text)
    deb = out / f"{package}_{control['Version']}_{control['Architecture']}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb))
    return deb


def standin_debs(arch: str = "amd64") -> dict:
    """package name -> .deb, for `arch` (python3-rpi.gpio only for amd64, see the module's docstring)."""
    key = hashlib.sha256(f"{DEBS_SETUP} {arch} {LGPIO} {RPI_LGPIO} {RPI_GPIO} {PACKAGES}".encode()).hexdigest()[:12]
    path = CACHE / f"debs-{arch}-{key}"
    if not (path / ".dreadpi-complete").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        building = path.with_name(path.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        with tempfile.TemporaryDirectory(prefix="dreadpi-debs-") as scratch:
            try:
                wheels = _wheels(Path(scratch), arch)
            except HarnessError as err:
                raise HarnessError(f"cannot fetch the stand-in packages' sources from PyPI: {err}") from None
            for package, wheel in wheels.items():
                _build(package, wheel, arch, building, Path(scratch) / "root")
        (building / ".dreadpi-complete").write_text("")
        shutil.rmtree(path, ignore_errors=True)
        building.rename(path)
    return {deb.name.split("_", 1)[0]: deb for deb in sorted(path.glob("*.deb"))}


def archive(directory: Path, debs: list) -> Path:
    """A flat apt repository of `debs` in `directory` (created): apt reads it with
    `deb [trusted=yes] file:DIRECTORY ./`, offline."""
    directory.mkdir(parents=True)
    entries = []
    for deb in debs:
        shutil.copy(deb, directory / deb.name)
        data = deb.read_bytes()
        control = run("dpkg-deb", "--field", str(deb)).stdout.rstrip("\n")
        entries.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(entries).encode()
    (directory / "Packages").write_bytes(packages)
    (directory / "Release").write_text(
        "Origin: dreadpi-tests\nLabel: dreadpi-tests\nDate: Thu, 01 Jan 1970 00:00:00 UTC\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    return directory


def contents(deb: Path) -> list:
    """The paths a .deb installs."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True)
    return [line.split()[-1].lstrip(".") for line in listing.stdout.splitlines()]


def debian_deb(package: str) -> Path:
    """The real Debian package `package` for this machine's architecture, from this machine's configured archive
    (bookworm here), downloaded once and cached: for a simulated Pi's flat archive, since the Pi itself cannot
    reach deb.debian.org."""
    path = CACHE / "debian-debs"
    found = sorted(path.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dreadpi-deb-", dir=CACHE) as scratch:
        try:
            run("apt-get", "update", "-qq")
            run("apt-get", "download", "-q", package, cwd=scratch)
        except HarnessError as err:
            raise HarnessError(f"cannot download Debian's {package}: {err}") from None
        (deb,) = Path(scratch).glob(f"{package}_*.deb")
        deb.rename(path / deb.name)
    return path / deb.name
