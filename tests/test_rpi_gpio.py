"""The rpi-gpio backend against the real RPi.GPIO C library, with no Pi.

In a private mount namespace, /proc/cpuinfo says BCM2835 and /dev/gpiomem is a 4096-byte file that RPi.GPIO maps
as the GPIO register page (REFERENCE §6). Function-select words show which pins became outputs; the set and clear
words keep the last bit written, which shows the level each pin was driven to. Nothing is mounted on the host:
/dev is replaced, inside the namespace only, by a directory holding the few device nodes the cycle needs.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_config

GPFSEL1, GPFSEL2, GPSET0, GPCLR0, GPLEV0 = 1, 2, 7, 10, 13
DEVICES = ("null", "zero", "urandom", "random", "full")


def words(page: Path) -> tuple:
    return struct.unpack("<1024I", page.read_bytes())


def set_words(page: Path, **values: int) -> None:
    data = list(words(page))
    index = {"GPSET0": GPSET0, "GPCLR0": GPCLR0, "GPLEV0": GPLEV0}
    for name, value in values.items():
        data[index[name]] = value
    page.write_bytes(struct.pack("<1024I", *data))


@pytest.fixture
def fake_pi(root, world_dir):
    dev = world_dir / "dev"
    dev.mkdir()
    for name in DEVICES:
        (dev / name).touch()
    page = dev / "gpiomem"
    page.write_bytes(bytes(4096))
    cpuinfo = world_dir / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nHardware\t: BCM2835\nRevision\t: a02082\nSerial\t\t: 00000000deadbeef\n")
    return world_dir, page


def run_on_fake_pi(directory: Path, cfg: Path) -> subprocess.CompletedProcess:
    binds = "".join(f"mount --bind /dev/{name} {directory}/dev/{name} && " for name in DEVICES)
    shell = (f"mount --make-rprivate / && {binds}mount --bind {directory}/cpuinfo /proc/cpuinfo && "
             f"mount --rbind {directory}/dev /dev && exec \"$0\" -m dreadpi run -c {cfg}")
    return subprocess.run(["unshare", "--mount", "sh", "-c", shell, sys.executable], capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def function(data: tuple, pin: int) -> int:
    return (data[GPFSEL1 if pin < 20 else GPFSEL2] >> ((pin % 10) * 3)) & 0b111


CASES = [
    # watts, active_low, mode, bits set high, bits cleared low (GPIO17 = relay 1, GPIO27 = relay 2)
    (350, False, "drm2", 1 << 17, 1 << 27),
    (550, False, "drm3", 1 << 27, 1 << 17),
    (350, True, "drm2", 1 << 27, 1 << 17),
    (550, True, "drm3", 1 << 17, 1 << 27),
    (900, False, "drm0", 0, 1 << 27),  # both cleared: 27 is the last write, and nothing was set
    (900, True, "drm0", 1 << 27, 0),  # both set: nothing was cleared
]


@pytest.mark.parametrize(("watts", "active_low", "mode", "high", "low"), CASES)
def test_the_real_library_drives_the_pattern(fake_pi, watts, active_low, mode, high, low):
    directory, page = fake_pi
    cfg = write_config(directory, {"script": {"command": f"/bin/echo {watts}"},
                                   "relays": {"backend": "rpi-gpio", "active_low": "yes" if active_low else "no"}})
    result = run_on_fake_pi(directory, cfg)
    assert result.returncode == 0, result.stderr
    assert f" {mode} " in result.stdout
    data = words(page)
    assert function(data, 17) == 0b001 and function(data, 27) == 0b001  # both are outputs
    assert (data[GPSET0], data[GPCLR0]) == (high, low)


def test_pins_found_as_inputs_after_a_reboot_are_re_driven(fake_pi):
    directory, page = fake_pi
    cfg = write_config(directory, {"script": {"command": "/bin/echo 350"}, "relays": {"backend": "rpi-gpio"}})
    assert run_on_fake_pi(directory, cfg).returncode == 0
    # The hardware now reads 17 high and 27 low, as driven: a second cycle finds nothing amiss.
    set_words(page, GPLEV0=1 << 17, GPSET0=0, GPCLR0=0)
    second = run_on_fake_pi(directory, cfg)
    assert second.returncode == 0 and "re-driving" not in second.stderr
    # A reboot: every pin back to an input, levels gone.
    page.write_bytes(bytes(4096))
    third = run_on_fake_pi(directory, cfg)
    assert "relays read back as not driven, not 1 0 as last driven (a reboot?); re-driving" in third.stderr
    data = words(page)
    assert function(data, 17) == 0b001 and (data[GPSET0], data[GPCLR0]) == (1 << 17, 1 << 27)


def test_without_a_pi_the_backend_fails_clearly(root, world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}, "relays": {"backend": "rpi-gpio"}})
    result = subprocess.run([sys.executable, "-m", "dreadpi", "run", "-c", str(cfg)], capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 5
    assert "dreadpi: rpi-gpio relays:" in result.stderr
    assert "rpi-gpio relays:" in (world_dir / "log" / "error.log").read_text()
