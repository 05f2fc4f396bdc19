"""A fake Raspberry Pi's GPIO, for tests: the kernel's gpiochip character device emulated by an LD_PRELOAD shim.

This machine has no gpiochip, but the code that drives relays on a Pi talks to one: rpi-lgpio (the `RPi.GPIO`
that Raspberry Pi OS installs, REFERENCE §7) through the lgpio C library, or Python's `fcntl.ioctl` directly.
`shim.c` intercepts libc's open/ioctl/close so that the REAL lgpio and rpi-lgpio run unmodified against a model
of the kernel's GPIO uAPI (v1 and v2), with its state in one file shared by every process and a history of
every real change of direction or level, which is what a relay sees.

`FakePi` runs commands in a private mount namespace that looks like the chosen Pi: /dev has the model's
/dev/gpiochipN, /sys/module has (or lacks) the pinctrl driver's `persist_gpio_outputs`, the device tree gives
the model and revision, /proc/sys/kernel/random/boot_id changes on `reboot()`. Every mount exists only inside
the namespace; nothing on the host changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DREADPI_TEST_CACHE", "/var/cache/dreadpi-tests")) / "gpiochip"
SHIM_SOURCE = HERE / "shim.c"
GCC = ("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror")
LIBRARIES = ("lgpio==0.2.2.0", "rpi-lgpio==0.6")
DEVICES = ("null", "zero", "urandom", "random", "full")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class FakePiError(RuntimeError):
    pass


# ---- the kernel's GPIO uAPI (<linux/gpio.h>), for pure-Python callers -------------------------------------------

GPIO_MAX_NAME_SIZE = 32
GPIO_V2_LINES_MAX = 64
GPIO_V2_LINE_NUM_ATTRS_MAX = 10

GPIO_V2_LINE_FLAG_USED = 1 << 0
GPIO_V2_LINE_FLAG_ACTIVE_LOW = 1 << 1
GPIO_V2_LINE_FLAG_INPUT = 1 << 2
GPIO_V2_LINE_FLAG_OUTPUT = 1 << 3
GPIO_V2_LINE_ATTR_ID_FLAGS = 1
GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES = 2

GPIOLINE_FLAG_KERNEL = 1 << 0
GPIOLINE_FLAG_IS_OUT = 1 << 1


class GpioChipInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE), ("label", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("lines", ctypes.c_uint32)]


class GpioV2LineAttribute(ctypes.Structure):
    # A union of flags / values (u64) and debounce_period_us (u32): on little-endian one u64 serves all three.
    _fields_ = [("id", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class GpioV2LineConfigAttribute(ctypes.Structure):
    _fields_ = [("attr", GpioV2LineAttribute), ("mask", ctypes.c_uint64)]


class GpioV2LineConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("num_attrs", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 5),
                ("attrs", GpioV2LineConfigAttribute * GPIO_V2_LINE_NUM_ATTRS_MAX)]


class GpioV2LineRequest(ctypes.Structure):
    _fields_ = [("offsets", ctypes.c_uint32 * GPIO_V2_LINES_MAX), ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("config", GpioV2LineConfig), ("num_lines", ctypes.c_uint32), ("event_buffer_size", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 5), ("fd", ctypes.c_int32)]


class GpioV2LineInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE), ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("offset", ctypes.c_uint32), ("num_attrs", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("attrs", GpioV2LineAttribute * GPIO_V2_LINE_NUM_ATTRS_MAX), ("padding", ctypes.c_uint32 * 4)]


class GpioV2LineValues(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


def _ioc(direction: int, number: int, struct: type) -> int:
    """_IOC() of <asm-generic/ioctl.h>: direction (2 = read, 3 = read/write), size, type 0xB4, number."""
    return (direction << 30) | (ctypes.sizeof(struct) << 16) | (0xB4 << 8) | number


GPIO_GET_CHIPINFO_IOCTL = _ioc(2, 0x01, GpioChipInfo)
GPIO_V2_GET_LINEINFO_IOCTL = _ioc(3, 0x05, GpioV2LineInfo)
GPIO_V2_GET_LINE_IOCTL = _ioc(3, 0x07, GpioV2LineRequest)
GPIO_V2_LINE_GET_VALUES_IOCTL = _ioc(3, 0x0E, GpioV2LineValues)
GPIO_V2_LINE_SET_VALUES_IOCTL = _ioc(3, 0x0F, GpioV2LineValues)


def _offset(struct: type, *path: str) -> int:
    """Byte offset of a nested field, e.g. _offset(GpioV2LineRequest, "config", "num_attrs")."""
    total = 0
    for name in path:
        member = getattr(struct, name)
        total += member.offset
        struct = dict(struct._fields_)[name]
        if hasattr(struct, "_type_") and hasattr(struct, "_length_"):  # an array: go on into its element
            struct = struct._type_
    return total


# A standalone request_output(chip_fd, offset, value, consumer) -> request fd, in plain struct/fcntl: processes
# on the fake Pi run it with `python -S` instead of importing this module (ctypes, dataclasses...), which costs
# a few hundred milliseconds each time. The layout comes from the ctypes structures above.
REQUEST_OUTPUT_SOURCE = f"""
import fcntl, struct
def request_output(chip_fd, offset, value, consumer):
    request = bytearray({ctypes.sizeof(GpioV2LineRequest)})
    name = consumer.encode()[:{GPIO_MAX_NAME_SIZE - 1}]
    struct.pack_into("I", request, {_offset(GpioV2LineRequest, "offsets")}, offset)
    struct.pack_into(str(len(name)) + "s", request, {_offset(GpioV2LineRequest, "consumer")}, name)
    struct.pack_into("Q", request, {_offset(GpioV2LineRequest, "config", "flags")}, {GPIO_V2_LINE_FLAG_OUTPUT})
    struct.pack_into("I", request, {_offset(GpioV2LineRequest, "config", "num_attrs")}, 1)
    # attrs[0]: id, padding, the output values bitmap, mask
    attribute = ({GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES}, 0, 1 if value else 0, 1)
    struct.pack_into("IIQQ", request, {_offset(GpioV2LineRequest, "config", "attrs")}, *attribute)
    struct.pack_into("I", request, {_offset(GpioV2LineRequest, "num_lines")}, 1)
    fcntl.ioctl(chip_fd, {GPIO_V2_GET_LINE_IOCTL:#x}, request)
    return struct.unpack_from("i", request, {_offset(GpioV2LineRequest, "fd")})[0]
"""

# The body of a `FakePi.hold()` process (argv: chip line value consumer): hold one output line, like another
# program on the Pi, until stdin closes.
HOLD_SOURCE = REQUEST_OUTPUT_SOURCE + """
import os, sys
chip_fd = os.open("/dev/gpiochip" + sys.argv[1], os.O_RDWR | os.O_CLOEXEC)
request_fd = request_output(chip_fd, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
print("held", flush=True)
sys.stdin.read()
os.close(request_fd)
os.close(chip_fd)
"""


# ---- the boards ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chip:
    number: int
    label: str
    lines: int
    compatible: str  # of its device-tree node, as /sys/bus/gpio/devices/gpiochipN/of_node/compatible shows it
    names: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Board:
    revision: str
    model: str
    compatible: Tuple[str, ...]
    module: str  # the pinctrl driver that owns persist_gpio_outputs
    header_chip: int
    chips: Tuple[Chip, ...]
    links: Dict[int, int] = field(default_factory=dict)  # /dev/gpiochipN -> gpiochipM symlinks udev makes


HEADER_NAMES = ("ID_SDA", "ID_SCL", *(f"GPIO{n}" for n in range(2, 28)))
EXP_NAMES = ("BT_ON", "WL_ON", "PWR_LED_OFF", "GLOBAL_RESET", "VDD_SD_IO_SEL", "CAM_GPIO", "SD_PWR_ON", "")
BRCMSTB = (("gpio-brcmstb@107d508500", 32), ("gpio-brcmstb@107d508520", 4), ("gpio-brcmstb@107d517c00", 17),
           ("gpio-brcmstb@107d517c20", 6))
PI5_MODEL = "Raspberry Pi 5 Model B Rev 1.0"
PI5_COMPATIBLE = ("raspberrypi,5-model-b", "brcm,bcm2712")


def _rp1(number: int) -> Chip:
    return Chip(number, "pinctrl-rp1", 54, "raspberrypi,rp1-gpio", HEADER_NAMES)


def _brcmstb(first: int) -> Tuple[Chip, ...]:
    return tuple(Chip(first + i, label, lines, "brcm,brcmstb-gpio") for i, (label, lines) in enumerate(BRCMSTB))


MODELS: Dict[str, Board] = {
    # The Zero 2 W's device tree has no firmware GPIO expander (bcm2710-rpi-zero-2-w.dts): one chip.
    "zero2w": Board("902120", "Raspberry Pi Zero 2 W Rev 1.0", ("raspberrypi,model-zero-2-w", "brcm,bcm2837"),
                    "pinctrl_bcm2835", 0, (Chip(0, "pinctrl-bcm2835", 54, "brcm,bcm2835-gpio", HEADER_NAMES),)),
    "pi4": Board("c03114", "Raspberry Pi 4 Model B Rev 1.4", ("raspberrypi,4-model-b", "brcm,bcm2711"),
                 "pinctrl_bcm2835", 0, (Chip(0, "pinctrl-bcm2711", 58, "brcm,bcm2711-gpio", HEADER_NAMES),
                                        Chip(1, "raspberrypi-exp-gpio", 8, "raspberrypi,firmware-gpio", EXP_NAMES))),
    # Kernels since mid-2024 number RP1 gpiochip0 and the SoC's chips from 10; Raspberry Pi OS's udev rules add
    # a /dev/gpiochip4 symlink for code that still opens chip 4 (raspberrypi/linux#6144).
    "pi5": Board("d04170", PI5_MODEL, PI5_COMPATIBLE, "pinctrl_rp1", 0, (_rp1(0), *_brcmstb(10)), {4: 0}),
    "pi5-old": Board("d04170", PI5_MODEL, PI5_COMPATIBLE, "pinctrl_rp1", 4, (*_brcmstb(0), _rp1(4))),
}


# ---- building what the fake needs (once, cached) ----------------------------------------------------------------


def _run(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except subprocess.CalledProcessError as err:
        raise FakePiError(f"{' '.join(argv)} failed ({err.returncode}): {err.stderr or err.stdout}") from None


def build_shim() -> Path:
    """The shim, compiled once per version of its source (and of the compiler command) into the cache; built
    aside and renamed into place, so a half-written library is never loaded."""
    key = hashlib.sha256(SHIM_SOURCE.read_bytes() + " ".join(GCC).encode()).hexdigest()[:16]
    target = CACHE / key / "gpioshim.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".gpioshim-{os.getpid()}.so")
    _run([*GCC, "-o", str(building), str(SHIM_SOURCE), "-ldl"])
    os.replace(building, target)
    return target


def ensure_libraries() -> Path:
    """A site dir holding the real lgpio and rpi-lgpio (installed once). Not the venv: the venv has PyPI's
    RPi.GPIO, the same module name; put this dir first on PYTHONPATH to get rpi-lgpio's `RPi.GPIO`."""
    site = CACHE / "rpi-lgpio-site"
    marker = site / ".dreadpi-complete"
    wanted = "\n".join(LIBRARIES)
    if marker.exists() and marker.read_text() == wanted:
        return site
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f"rpi-lgpio-site.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
          "--no-deps", "--target", str(building), *LIBRARIES])
    (building / ".dreadpi-complete").write_text(wanted)
    if not marker.exists() or marker.read_text() != wanted:
        shutil.rmtree(site, ignore_errors=True)
    try:
        building.rename(site)
    except OSError:  # another process finished first
        shutil.rmtree(building, ignore_errors=True)
    return site


_shim_libraries: Dict[Path, ctypes.CDLL] = {}


def _shim_library(shim: Path) -> ctypes.CDLL:
    """The shim's harness entry points (reap, reboot), so that every change of state follows one implementation.
    Loaded without preloading: in this process it intercepts nothing."""
    if shim not in _shim_libraries:
        library = ctypes.CDLL(str(shim))
        library.gpioshim_reap.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        library.gpioshim_reboot.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        _shim_libraries[shim] = library
    return _shim_libraries[shim]


# ---- what the harness reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    chip: int
    offset: int
    name: str
    direction: str  # "in" or "out"
    level: int  # the physical level; for an input, the last level it had (the real one is unknown)
    holder: int  # pid of the process holding the line, 0 if free
    consumer: str  # the holder's consumer label
    flags: int  # the holder's request flags kept on the line (GPIO_V2_LINE_FLAG_ACTIVE_LOW, bias, drive)

    @property
    def used(self) -> bool:
        return self.holder != 0


@dataclass(frozen=True)
class Event:
    """One history record: `kind` is request (detail: consumer), release (detail: "" or "reaped" when its
    holder died without closing), dir (detail "in->out" / "out->in"), level ("0->1" / "1->0"), or reboot
    (detail: the new boot id; chip and line None)."""

    seq: int
    pid: int
    chip: Optional[int]
    line: Optional[int]
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}".rstrip()


def _parse_event(record: str) -> Event:
    seq, pid, chip, line, rest = record.split(" ", 4)
    kind, _, detail = rest.partition(" ")
    return Event(int(seq), int(pid), None if chip == "-" else int(chip), None if line == "-" else int(line), kind,
                 detail)


def _parse_line(record: str) -> Line:
    fields = record.split(" ", 9)
    _, chip, offset, direction, level, pid, _start, flags, name = fields[:9]
    return Line(int(chip), int(offset), "" if name == "-" else name, direction, int(level), int(pid),
                fields[9] if len(fields) > 9 else "", int(flags, 16))


def _initial_state(board: Board, keeps_outputs: bool) -> str:
    """The state file at power-on: every line an input at level 0, free (the format shim.c reads)."""
    records = ["gpioshim 1", f"keep_outputs {int(keeps_outputs)}", "seq 0"]
    for chip in board.chips:
        records.append(f"chip {chip.number} {chip.lines} {chip.label}")
        for offset in range(chip.lines):
            name = chip.names[offset] if offset < len(chip.names) and chip.names[offset] else "-"
            records.append(f"line {chip.number} {offset} in 0 0 0 0 {name} ")
    return "\n".join(records) + "\n"


# ---- the fake Pi -----------------------------------------------------------------------------------------------

# Runs as `sh -c MOUNT_SCRIPT fakepi WORKDIR PRELOAD argv...` inside `unshare --mount`, as root, then execs argv.
MOUNT_SCRIPT = """set -e
W=$1; PRELOAD=$2; shift 2
# Belt and braces (unshare already made it so): no mount below propagates to the host.
mount --make-rprivate /
# /dev: a directory of our own, with the few real device nodes bound into it (--rbind brings those binds along).
for d in {devices}; do mount --bind /dev/$d "$W/dev/$d"; done
mount --rbind "$W/dev" /dev
mount -t tmpfs -o mode=1777,size=16m fakepi-shm /dev/shm
# /sys/module, /sys/firmware, /sys/bus: read-only tmpfs holding only what the Pi would show there.
for d in module firmware bus; do mount -t tmpfs -o mode=755,size=1m fakepi-$d /sys/$d; done
cp -a "$W/sys/module" "$W/sys/firmware" "$W/sys/bus" /sys/
for d in module firmware bus; do mount -o remount,ro /sys/$d; done
# Files over files: the Pi's boot id (reboot() rewrites it in place) and its cpuinfo.
mount --bind "$W/boot_id" /proc/sys/kernel/random/boot_id
mount --bind "$W/cpuinfo" /proc/cpuinfo
export LD_PRELOAD="$PRELOAD"
exec "$@"
""".format(devices=" ".join(DEVICES))


class FakePi:
    """A Raspberry Pi's GPIO, seen by commands run with `run()` (as root, in a private mount namespace).

    model: "zero2w", "pi4", "pi5" (current kernels: header on gpiochip0) or "pi5-old" (header on gpiochip4).
    persist: the pinctrl driver's persist_gpio_outputs parameter, True / False, or None for a kernel that has
    no such parameter (its file is then absent). keeps_outputs: whether a released output stays driven; by
    default what `persist` says, and for None what Raspberry Pi kernels did before the parameter (keep them).
    """

    def __init__(self, model: str = "pi4", persist: Optional[bool] = True,
                 keeps_outputs: Optional[bool] = None) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        self.model = model
        self.board = MODELS[model]
        self.persist = persist
        self.keeps_outputs = persist is not False if keeps_outputs is None else keeps_outputs
        self.boot_id = str(uuid.uuid4())
        self.workdir: Optional[Path] = None
        self.shim: Optional[Path] = None
        self._holders: List[subprocess.Popen] = []

    # -- life cycle

    def __enter__(self) -> FakePi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the shim (cached) and lay out the fake Pi's files; cleans up after itself if that fails."""
        if os.geteuid() != 0:
            raise FakePiError("a fake Pi needs root (mount namespaces)")
        self.shim = build_shim()
        self.workdir = Path(tempfile.mkdtemp(prefix="dreadpi-fakepi-"))
        try:
            self.workdir.chmod(0o755)
            self._make_dev()
            self._make_sys()
            self._make_proc()
            self._make_kernel()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop live holders and delete every file; safe to call twice."""
        for holder in self._holders:
            self._stop(holder)
        self._holders.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- the fake Pi's files

    @property
    def header_chip(self) -> int:
        """The gpiochip number of the controller behind the 40-pin header."""
        return self.board.header_chip

    @property
    def revision(self) -> str:
        return self.board.revision

    @property
    def state_file(self) -> Path:
        return self._work / "kernel" / "state"

    @property
    def history_file(self) -> Path:
        return self._work / "kernel" / "history"

    @property
    def _work(self) -> Path:
        if self.workdir is None:
            raise FakePiError("the fake Pi is not started (use it as a context manager)")
        return self.workdir

    def _make_dev(self) -> None:
        """Placeholders for the real devices bound over them, regular files for the gpiochips (the shim
        recognises them), and udev's symlinks."""
        dev = self._work / "dev"
        dev.mkdir()
        for name in DEVICES:
            (dev / name).touch()
        (dev / "shm").mkdir()
        for chip in self.board.chips:
            placeholder = dev / f"gpiochip{chip.number}"
            placeholder.touch()
            placeholder.chmod(0o660)
        for link, target in self.board.links.items():
            (dev / f"gpiochip{link}").symlink_to(f"gpiochip{target}")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            (dev / name).symlink_to(target)

    def _make_sys(self) -> None:
        """The trees copied into the tmpfs mounted over /sys/module, /sys/firmware and /sys/bus."""
        module = self._work / "sys" / "module"
        module.mkdir(parents=True)
        if self.persist is not None:
            _write(module / self.board.module / "parameters" / "persist_gpio_outputs",
                   b"Y\n" if self.persist else b"N\n", 0o444)
        base = self._work / "sys" / "firmware" / "devicetree" / "base"
        _write(base / "model", self.board.model.encode() + b"\0", 0o444)
        _write(base / "compatible", b"".join(name.encode() + b"\0" for name in self.board.compatible), 0o444)
        _write(base / "system" / "linux,revision", int(self.board.revision, 16).to_bytes(4, "big"), 0o444)
        devices = self._work / "sys" / "bus" / "gpio" / "devices"
        devices.mkdir(parents=True)
        for chip in self.board.chips:
            _write(devices / f"gpiochip{chip.number}" / "of_node" / "compatible", chip.compatible.encode() + b"\0",
                   0o444)

    def _make_proc(self) -> None:
        _write(self._work / "boot_id", f"{self.boot_id}\n".encode(), 0o444)
        # What a 64-bit Raspberry Pi OS shows after the per-core entries.
        _write(self._work / "cpuinfo", (f"processor\t: 0\nBogoMIPS\t: 108.00\n\nRevision\t: {self.revision}\n"
                                        f"Serial\t\t: 10000000deadbeef\nModel\t\t: {self.board.model}\n").encode(),
               0o444)

    def _make_kernel(self) -> None:
        """The shim's state, history and lock files, writable by any process under test."""
        kernel = self._work / "kernel"
        kernel.mkdir()
        kernel.chmod(0o777)
        self.state_file.write_text(_initial_state(self.board, self.keeps_outputs))
        for path in (self.state_file, self.history_file, kernel / "state.lock"):
            path.touch()
            path.chmod(0o666)

    # -- running things on the fake Pi

    def command(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Tuple[List[str], dict]:
        """The argv and environment that run `argv` on the fake Pi (for callers that need Popen)."""
        caller = dict(env or {})
        preload = " ".join(filter(None, [str(self.shim), caller.pop("LD_PRELOAD", "")]))
        environment = {"PATH": PATH, **caller, "GPIOSHIM_STATE": str(self.state_file),
                       "GPIOSHIM_HISTORY": str(self.history_file)}
        return (["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT, "fakepi",
                 str(self._work), preload, *argv], environment)

    def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv on the fake Pi as root; env is added to a minimal PATH-only environment."""
        command, environment = self.command(argv, env)
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)

    @contextlib.contextmanager
    def hold(self, line: int, consumer: str = "other-app", value: int = 1,
             chip: Optional[int] = None) -> Iterator[int]:
        """Another program holds `line` (of the header chip by default) as an output at `value` while the context
        lasts, as gpioset would; yields its pid."""
        chip = self.header_chip if chip is None else chip
        command, environment = self.command([sys.executable, "-S", "-c", HOLD_SOURCE, str(chip), str(line),
                                             str(value), consumer])
        holder = subprocess.Popen(command, env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self._holders.append(holder)
        try:
            if holder.stdout.readline() != "held\n":
                raise FakePiError(f"could not hold line {line}: {self._stop(holder)}")
            yield holder.pid
        finally:
            self._stop(holder)
            if holder in self._holders:
                self._holders.remove(holder)

    @staticmethod
    def _stop(holder: subprocess.Popen) -> str:
        """End a holder: closing its stdin lets it release the line and exit; kill it if it does not."""
        if holder.stdin and not holder.stdin.closed:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        return holder.stderr.read() if holder.stderr and not holder.stderr.closed else ""

    # -- what the kernel shows

    def lines(self, chip: Optional[int] = None) -> Dict[int, Line]:
        """Each line of `chip` (the header chip by default) by offset, after releasing dead holders' lines."""
        chip = self.header_chip if chip is None else chip
        self._reap()
        records = self.state_file.read_text().splitlines()
        found = [_parse_line(record) for record in records if record.startswith(f"line {chip} ")]
        return {line.offset: line for line in found}

    def history(self) -> List[Event]:
        """Every event so far, oldest first (dead holders' lines are released first)."""
        self._reap()
        return [_parse_event(record) for record in self.history_file.read_text().splitlines() if record]

    def reboot(self) -> None:
        """Power-cycle: holders die, every line becomes a free input, a new boot id; history marks it."""
        for holder in self._holders:
            holder.kill()
        self.boot_id = str(uuid.uuid4())
        (self._work / "boot_id").write_text(f"{self.boot_id}\n")  # in place (root may): bind mounts pin the inode
        status = _shim_library(self._shim).gpioshim_reboot(str(self.state_file).encode(),
                                                            str(self.history_file).encode(), self.boot_id.encode())
        if status:
            raise FakePiError(f"reboot failed: {os.strerror(-status)}")

    def _reap(self) -> None:
        status = _shim_library(self._shim).gpioshim_reap(str(self.state_file).encode(),
                                                          str(self.history_file).encode())
        if status:
            raise FakePiError(f"reading the gpio state failed: {os.strerror(-status)}")

    @property
    def _shim(self) -> Path:
        if self.shim is None:
            raise FakePiError("the fake Pi is not started (use it as a context manager)")
        return self.shim


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
