"""The gpiochip emulation itself (tests/gpiochip): the real lgpio and rpi-lgpio, a v1 C caller and a pure-Python
ioctl caller see what a Raspberry Pi's kernel would show them, on every model the harness offers.

Each test starts a fresh fake Pi; the history the shim keeps is what a relay on the line would have seen."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import gpiochip as uapi
from tests.conftest import require_root
from tests.gpiochip import (
    GPIO_V2_LINE_FLAG_OUTPUT,
    GPIO_V2_LINE_FLAG_USED,
    GPIOLINE_FLAG_IS_OUT,
    GPIOLINE_FLAG_KERNEL,
    MODELS,
    REQUEST_OUTPUT_SOURCE,
    FakePi,
    build_shim,
    ensure_libraries,
)

ALL_MODELS = sorted(MODELS)
RELAY = 17


@pytest.fixture(scope="module")
def site() -> Path:
    """rpi-lgpio and lgpio, installed once into the cache (not into the venv)."""
    require_root()
    build_shim()
    return ensure_libraries()


def rpi_gpio(pi: FakePi, site: Path, code: str, chip: bool = True) -> subprocess.CompletedProcess:
    """Run `code` after `import RPi.GPIO as GPIO` (rpi-lgpio's) on the fake Pi, in BCM numbering."""
    env = {"PYTHONPATH": str(site), "RPI_LGPIO_REVISION": pi.revision}
    if chip:
        env["RPI_LGPIO_CHIP"] = str(pi.header_chip)
    prologue = "import RPi.GPIO as GPIO\nGPIO.setwarnings(False)\nGPIO.setmode(GPIO.BCM)\n"
    # -S: nothing from the venv's site-packages (PyPI's RPi.GPIO is there), and a faster start.
    return pi.run([sys.executable, "-S", "-c", prologue + textwrap.dedent(code)], env=env)


def events(pi: FakePi, line: int, chip: int | None = None, since: int = 0) -> list:
    """The line's history after sequence number `since`, as "request lg", "dir in->out", "level 0->1"..."""
    chip = pi.header_chip if chip is None else chip
    return [str(event) for event in pi.history() if (event.chip, event.line) == (chip, line) and event.seq > since]


def changes(pi: FakePi, line: int, since: int = 0) -> list:
    """Only what a relay notices: real changes of direction and level."""
    return [event for event in events(pi, line, since=since) if event.startswith(("dir ", "level "))]


def last_seq(pi: FakePi) -> int:
    history = pi.history()
    return history[-1].seq if history else 0


@pytest.mark.parametrize("model", ALL_MODELS)
def test_setup_with_initial_drives_the_line_once(site, model):
    with FakePi(model) as pi:
        result = rpi_gpio(pi, site, f"""
            GPIO.setup({RELAY}, GPIO.OUT, initial=1)
            print(GPIO.__file__, GPIO.gpio_function({RELAY}) == GPIO.OUT)
        """)
        assert result.returncode == 0, result.stderr
        assert str(site) in result.stdout and result.stdout.endswith(" True\n")  # rpi-lgpio, not PyPI's RPi.GPIO
        line = pi.lines()[RELAY]
        assert (line.direction, line.level, line.used) == ("out", 1, False)  # released, still driven (persist)
        assert events(pi, RELAY) == ["request lg", "level 0->1", "dir in->out", "release"]
        touched = {(event.chip, event.line) for event in pi.history()}
        assert touched == {(pi.header_chip, RELAY)}  # nothing else moved, on any chip


@pytest.mark.parametrize("model", ALL_MODELS)
def test_setup_without_initial_claims_a_persisted_output_as_input_first(site, model):
    """Pins rpi-lgpio 0.6's known behaviour (REFERENCE §7): setup(OUT) without `initial` reads the line first,
    and lgpio claims it as an input to read it, so a relay driven by an earlier process drops out briefly."""
    with FakePi(model) as pi:
        assert rpi_gpio(pi, site, f"GPIO.setup({RELAY}, GPIO.OUT, initial=1)").returncode == 0
        before = last_seq(pi)
        result = rpi_gpio(pi, site, f"""
            print(GPIO.gpio_function({RELAY}) == GPIO.OUT)
            GPIO.setup({RELAY}, GPIO.OUT)
            print(GPIO.input({RELAY}))
        """)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "True\n1\n"  # the kernel's line info said OUT before anything was claimed
        assert changes(pi, RELAY, since=before) == ["dir out->in", "dir in->out"]
        assert pi.lines()[RELAY].direction == "out"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_release_without_persist_turns_the_output_into_an_input(site, model):
    with FakePi(model, persist=False) as pi:
        assert pi.run(["sh", "-c", "cat /sys/module/*/parameters/persist_gpio_outputs"]).stdout == "N\n"
        assert rpi_gpio(pi, site, f"GPIO.setup({RELAY}, GPIO.OUT, initial=1)").returncode == 0
        assert events(pi, RELAY) == ["request lg", "level 0->1", "dir in->out", "release", "dir out->in"]
        line = pi.lines()[RELAY]
        assert (line.direction, line.used) == ("in", False)


# The pure-Python caller: struct gpio_v2_line_info (256 bytes) and GPIO_V2_GET_LINEINFO_IOCTL spelled out from
# <linux/gpio.h>, independently of the harness's ctypes definitions.
LINEINFO = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
info = bytearray(256)
struct.pack_into("I", info, 64, int(sys.argv[2]))
fcntl.ioctl(fd, 0xC100B405, info)
name, consumer = (info[i:i + 32].split(b"\\0")[0].decode() for i in (0, 32))
print(name, consumer, struct.unpack_from("Q", info, 72)[0])
"""


@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_held_line_is_busy_and_line_info_names_its_holder(site, model):
    with FakePi(model) as pi, pi.hold(RELAY, consumer="other-app", value=1) as holder:
        assert pi.lines()[RELAY].holder == holder
        before = last_seq(pi)
        result = rpi_gpio(pi, site, f"GPIO.setup({RELAY}, GPIO.OUT, initial=0)")
        assert result.returncode != 0 and "GPIO busy" in result.stderr  # lgpio's text for EBUSY
        info = pi.run([sys.executable, "-S", "-c", LINEINFO, f"/dev/gpiochip{pi.header_chip}", str(RELAY)])
        assert info.returncode == 0, info.stderr
        name, consumer, flags = info.stdout.split()
        assert (name, consumer) == (f"GPIO{RELAY}", "other-app")
        assert int(flags) == GPIO_V2_LINE_FLAG_USED | GPIO_V2_LINE_FLAG_OUTPUT
        assert events(pi, RELAY, since=before) == []  # the refused request changed nothing


def test_lines_are_released_when_the_holder_lets_go(root):
    with FakePi("pi4") as pi:
        with pi.hold(RELAY, consumer="gpioset", value=1):
            assert pi.lines()[RELAY].consumer == "gpioset"
        line = pi.lines()[RELAY]
        assert (line.used, line.direction, line.level) == (False, "out", 1)


V1_CALLER = r"""
#include <errno.h>
#include <fcntl.h>
#include <linux/gpio.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int handle(int chip, unsigned a, unsigned b, unsigned flags, int v0, int v1, const char *consumer)
{
    struct gpiohandle_request req;
    memset(&req, 0, sizeof(req));
    req.lineoffsets[0] = a;
    req.lineoffsets[1] = b;
    req.lines = b == a ? 1 : 2;
    req.flags = flags;
    req.default_values[0] = v0;
    req.default_values[1] = v1;
    strcpy(req.consumer_label, consumer);
    return ioctl(chip, GPIO_GET_LINEHANDLE_IOCTL, &req) ? -errno : req.fd;
}

int main(int argc, char **argv)
{
    int chip = open(argv[1], O_RDWR), out, in;
    struct gpiochip_info info;
    struct gpioline_info line = {.line_offset = 22};
    struct gpiohandle_data data = {.values = {0, 1}};
    if (chip < 0 || ioctl(chip, GPIO_GET_CHIPINFO_IOCTL, &info)) return 1;
    printf("chip %s %s %u\n", info.name, info.label, info.lines);
    out = handle(chip, 22, 23, GPIOHANDLE_REQUEST_OUTPUT, 1, 0, "v1-test");
    ioctl(chip, GPIO_GET_LINEINFO_IOCTL, &line);
    printf("info %s %s %u\n", line.name, line.consumer, line.flags);
    printf("busy %d\n", handle(chip, 23, 23, GPIOHANDLE_REQUEST_OUTPUT, 0, 0, "second") == -EBUSY);
    printf("partly-busy %d\n", handle(chip, 25, 22, GPIOHANDLE_REQUEST_OUTPUT, 1, 0, "partial") == -EBUSY);
    printf("invalid %d\n", handle(chip, 24, 24, GPIOHANDLE_REQUEST_INPUT | GPIOHANDLE_REQUEST_OUTPUT, 0, 0, "x")
           == -EINVAL);
    printf("set %d\n", ioctl(out, GPIOHANDLE_SET_LINE_VALUES_IOCTL, &data));
    memset(&data, 0, sizeof(data));
    printf("get %d", ioctl(out, GPIOHANDLE_GET_LINE_VALUES_IOCTL, &data));
    printf(" %d %d\n", data.values[0], data.values[1]);
    in = handle(chip, 24, 24, GPIOHANDLE_REQUEST_INPUT, 0, 0, "v1-input");
    printf("input-set %d\n", ioctl(in, GPIOHANDLE_SET_LINE_VALUES_IOCTL, &data) && errno == EPERM);
    close(in);
    close(out);
    return 0;
}
"""


def test_v1_handle_requests_behave_as_libgpiod_1_6_sees_them(root, tmp_path):
    source = tmp_path / "v1.c"
    source.write_text(V1_CALLER)
    program = tmp_path / "v1"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(program), str(source)], check=True)
    with FakePi("pi4") as pi:
        result = pi.run([str(program), "/dev/gpiochip0"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "chip gpiochip0 pinctrl-bcm2711 58",
            f"info GPIO22 v1-test {GPIOLINE_FLAG_KERNEL | GPIOLINE_FLAG_IS_OUT}",
            "busy 1", "partly-busy 1", "invalid 1", "set 0", "get 0 0 1", "input-set 1"]
        assert events(pi, 22) == ["request v1-test", "level 0->1", "dir in->out", "level 1->0", "release"]
        assert events(pi, 23) == ["request v1-test", "dir in->out", "level 0->1", "release"]
        assert events(pi, 24) == ["request v1-input", "release"]
        # As linehandle_create() does: line 25 was requested and driven before 22 turned out busy, then released.
        assert events(pi, 25) == ["request partial", "level 0->1", "dir in->out", "release"]
        lines = pi.lines()
        assert [(lines[n].direction, lines[n].level) for n in (22, 23, 24)] == [("out", 0), ("out", 1), ("in", 0)]


LAYOUT = r"""
#include <linux/gpio.h>
#include <stddef.h>
#include <stdio.h>
int main(void)
{
    printf("%lu %lu %lu %lu %lu %zu %zu %zu %zu\n", (unsigned long)GPIO_GET_CHIPINFO_IOCTL,
           (unsigned long)GPIO_V2_GET_LINEINFO_IOCTL, (unsigned long)GPIO_V2_GET_LINE_IOCTL,
           (unsigned long)GPIO_V2_LINE_GET_VALUES_IOCTL, (unsigned long)GPIO_V2_LINE_SET_VALUES_IOCTL,
           offsetof(struct gpio_v2_line_request, config.attrs), offsetof(struct gpio_v2_line_request, num_lines),
           offsetof(struct gpio_v2_line_request, fd), sizeof(struct gpio_v2_line_info));
    return 0;
}
"""


def test_the_harness_uapi_layouts_match_the_kernel_header(tmp_path):
    """The ctypes structures (and the standalone request_output built from them) against <linux/gpio.h>."""
    (tmp_path / "layout.c").write_text(LAYOUT)
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")], check=True)
    printed = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    request = uapi.GpioV2LineRequest
    assert [int(n) for n in printed.split()] == [
        uapi.GPIO_GET_CHIPINFO_IOCTL, uapi.GPIO_V2_GET_LINEINFO_IOCTL, uapi.GPIO_V2_GET_LINE_IOCTL,
        uapi.GPIO_V2_LINE_GET_VALUES_IOCTL, uapi.GPIO_V2_LINE_SET_VALUES_IOCTL,
        request.config.offset + uapi.GpioV2LineConfig.attrs.offset, request.num_lines.offset, request.fd.offset,
        ctypes.sizeof(uapi.GpioV2LineInfo)]


KILLED = REQUEST_OUTPUT_SOURCE + """
import os, signal
request_output(os.open("/dev/gpiochip0", os.O_RDWR), 5, 1, "doomed")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_holders_lines_are_reaped_with_release_semantics(root):
    with FakePi("pi4", persist=False) as pi:
        result = pi.run([sys.executable, "-S", "-c", KILLED])
        assert result.returncode == -9
        assert events(pi, 5) == ["request doomed", "level 0->1", "dir in->out", "release reaped", "dir out->in"]
        assert not pi.lines()[5].used


FOREIGN_PROC = REQUEST_OUTPUT_SOURCE + """
import fcntl, os, struct, subprocess, sys
chip = os.open("/dev/gpiochip0", os.O_RDWR)
request_output(chip, int(sys.argv[1]), 1, "ns-test")
if sys.argv[1] == "5":  # hold 5 while another process requests 6 (and reaps what it thinks is dead)
    other = subprocess.run([sys.executable, "-S", "-c", sys.argv[2], "6"], capture_output=True, text=True)
    info = bytearray(256)
    struct.pack_into("I", info, 64, 5)
    fcntl.ioctl(chip, 0xC100B405, info)
    print(os.path.exists(f"/proc/{os.getpid()}"), other.returncode, struct.unpack_from("Q", info, 72)[0])
"""


def test_a_proc_of_another_pid_namespace_does_not_confuse_the_shim(root):
    """As in a simulated Pi's chroot entered with nsenter --mount: /proc belongs to the Pi's PID namespace and
    shows none of our pids. Chips are still recognised (by inode) and live holders are not reaped."""
    namespace = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "60"])
    try:
        with FakePi("pi4") as pi:
            argv, env = pi.command([sys.executable, "-S", "-c", FOREIGN_PROC, "5", FOREIGN_PROC])
            enter = ["nsenter", f"--target={namespace.pid}", "--mount", "--"]
            for _ in range(200):  # until unshare's child has mounted the new /proc, which does not show unshare
                if subprocess.run([*enter, "test", "-e", f"/proc/{namespace.pid}"]).returncode != 0:
                    break
                time.sleep(0.01)
            result = subprocess.run([*enter, *argv], env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"False 0 {GPIO_V2_LINE_FLAG_USED | GPIO_V2_LINE_FLAG_OUTPUT}\n"
            assert events(pi, 5) == ["request ns-test", "level 0->1", "dir in->out", "release"]  # not "reaped"
            assert events(pi, 6) == ["request ns-test", "level 0->1", "dir in->out", "release"]
    finally:
        namespace.kill()
        namespace.wait()


CHIPS = """
import fcntl, glob, os
for path in sorted(glob.glob("/dev/gpiochip*")):
    info = bytearray(68)
    fcntl.ioctl(os.open(path, os.O_RDONLY), 0x8044B401, info)
    print(path, info[:32].split(b"\\0")[0].decode(), info[32:64].split(b"\\0")[0].decode(),
          int.from_bytes(info[64:], "little"))
"""

ENVIRONMENT = """
tr -d '\\0' < /proc/device-tree/model; echo
od -An -tx1 /proc/device-tree/system/linux,revision | tr -d ' '
cat /sys/module/*/parameters/persist_gpio_outputs
cat /proc/sys/kernel/random/boot_id
"""


@pytest.mark.parametrize("model", ALL_MODELS)
def test_the_fake_pi_looks_like_the_model(root, model):
    board = MODELS[model]
    with FakePi(model) as pi:
        result = pi.run(["sh", "-c", ENVIRONMENT])
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [board.model, board.revision.zfill(8), "Y", pi.boot_id]
        chips = pi.run([sys.executable, "-S", "-c", CHIPS])
        assert chips.returncode == 0, chips.stderr
        described = {chip.number: (chip.label, chip.lines) for chip in board.chips}
        expected = {f"/dev/gpiochip{n}": (f"gpiochip{n}", *described[n]) for n in described}
        expected.update({f"/dev/gpiochip{link}": (f"gpiochip{target}", *described[target])  # udev's symlinks
                         for link, target in board.links.items()})
        rows = map(str.split, chips.stdout.splitlines())
        seen = {path: (name, label, int(lines)) for path, name, label, lines in rows}
        assert seen == expected
        assert pi.lines()[RELAY].name == f"GPIO{RELAY}"


def test_a_reboot_resets_every_line_and_the_boot_id(root):
    with FakePi("pi5") as pi:
        old_boot = pi.boot_id
        with pi.hold(RELAY):
            pi.reboot()
        assert pi.boot_id != old_boot
        assert pi.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout == f"{pi.boot_id}\n"
        assert all(not line.used and line.direction == "in" for line in pi.lines().values())
        assert str(pi.history()[-1]) == f"reboot {pi.boot_id}"


def test_a_kernel_without_the_parameter_keeps_outputs_like_older_pi_kernels(site):
    with FakePi("pi4", persist=None) as pi:
        assert pi.run(["ls", "/sys/module"]).stdout == ""
        assert rpi_gpio(pi, site, f"GPIO.setup({RELAY}, GPIO.OUT, initial=1)").returncode == 0
        assert pi.lines()[RELAY].direction == "out"


def test_rpi_lgpio_finds_the_header_chip_of_an_old_pi5_kernel_by_itself(site):
    """Without RPI_LGPIO_CHIP, rpi-lgpio looks for RP1 in /sys/bus/gpio: on old Pi 5 kernels that is gpiochip4."""
    with FakePi("pi5-old") as pi:
        assert rpi_gpio(pi, site, f"GPIO.setup({RELAY}, GPIO.OUT, initial=1)", chip=False).returncode == 0
        assert pi.lines(4)[RELAY].direction == "out" and pi.lines(0)[RELAY].direction == "in"


def test_nothing_is_mounted_on_the_host(root):
    """Only fake-Pi mounts are looked for: other suites may mount things on the host at the same time."""
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text()
    with FakePi("pi4") as pi:
        assert pi.run(["sh", "-c", "ls /sys/module"]).stdout == "pinctrl_bcm2835\n"
        workdir = pi.workdir
        with open("/proc/self/mountinfo") as mounts:
            host_mounts = mounts.read()
        assert "fakepi" not in host_mounts and str(workdir) not in host_mounts
        assert "pinctrl_bcm2835" not in os.listdir("/sys/module") and os.listdir("/sys/module")
        assert Path("/proc/sys/kernel/random/boot_id").read_text() == host_boot_id != f"{pi.boot_id}\n"
    assert not workdir.exists()


PASSTHROUGH = """
import fcntl, os, struct, termios
read_end, write_end = os.pipe()
os.write(write_end, b"abc")
print(struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\\0" * 4))[0], os.path.exists("/proc/device-tree"))
"""


def test_without_a_state_file_the_shim_passes_everything_through(root):
    shim = build_shim()
    result = subprocess.run([sys.executable, "-c", PASSTHROUGH], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(shim)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"3 {os.path.exists('/proc/device-tree')}\n"
