"""The kernel's GPIO character device (/dev/gpiochipN, uAPI v2, Linux 5.10 and later), spoken with plain ioctl.

Two jobs. Reading a line's direction and holder from the kernel's line info claims nothing, so the rpi-gpio
backend can learn whether a relay pin is still driven without disturbing it (rpi-lgpio's own read claims the line
as an input, which drops the relay). And the `gpiochip` backend drives relays with no library at all: Debian on
a Pi 5 has no RPi.GPIO that can, and python3-libgpiod changed its whole API between bookworm (1.6) and trixie
(2.2), while this kernel interface is stable.

A line request lives as long as its file descriptor: a cycle's request ends when the process exits, and what the
line does then is the kernel's choice (see `dreadpi.hardware.release_keeps_outputs`); the relay hold service keeps
its requests open for as long as it runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from dreadpi.errors import RelayError

CONSUMER = "dreadpi"
# The header's pin controller, by the label its driver gives the chip: numbers differ between kernels (a Pi 5's
# header is gpiochip4 on early kernels and gpiochip0 on later ones), labels do not.
HEADER_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")

_CHIPINFO = struct.Struct("=32s32sI")
_LINEINFO = struct.Struct("=32s32sIIQ160x16x")
_REQUEST = struct.Struct("=64I32sQI20x240xII20xi")
_ATTRIBUTE = struct.Struct("=IIQQ")  # gpio_v2_line_config_attribute: id, padding, values, mask
_VALUES = struct.Struct("=QQ")


def _iowr(number: int, size: int, read_only: bool = False) -> int:
    direction = 2 if read_only else 3  # _IOC_READ, or _IOC_READ | _IOC_WRITE
    return (direction << 30) | (size << 16) | (0xB4 << 8) | number


GET_CHIPINFO = _iowr(0x01, _CHIPINFO.size, read_only=True)
GET_LINEINFO = _iowr(0x05, _LINEINFO.size)
GET_LINE = _iowr(0x07, _REQUEST.size)
SET_VALUES = _iowr(0x0F, _VALUES.size)

FLAG_USED = 1 << 0
FLAG_INPUT = 1 << 2
FLAG_OUTPUT = 1 << 3
_ATTR_OUTPUT_VALUES = 2


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class LineInfo:
    """What the kernel says of one line without anyone claiming it."""

    __slots__ = ("offset", "used", "output", "consumer")

    def __init__(self, offset: int, used: bool, output: bool, consumer: str) -> None:
        self.offset = offset
        self.used = used
        self.output = output
        self.consumer = consumer


class Chip:
    """An open /dev/gpiochipN."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise RelayError(f"gpiochip relays: cannot open {path}: {err.strerror}") from None
        try:
            name, label, self.lines = _CHIPINFO.unpack(fcntl.ioctl(self.fd, GET_CHIPINFO, bytes(_CHIPINFO.size)))
        except OSError as err:
            os.close(self.fd)
            raise RelayError(f"gpiochip relays: {path} is not a GPIO chip ({err.strerror})") from None
        self.name, self.label = _text(name), _text(label)

    def close(self) -> None:
        os.close(self.fd)

    def line_info(self, offset: int) -> LineInfo:
        if not 0 <= offset < self.lines:
            raise RelayError(f"relays.pins: GPIO{offset} does not exist on {self.path} ({self.label}, "
                             f"{self.lines} lines)")
        query = _LINEINFO.pack(b"", b"", offset, 0, 0)
        try:
            _name, consumer, _offset, _attrs, flags = _LINEINFO.unpack(fcntl.ioctl(self.fd, GET_LINEINFO, query))
        except OSError as err:
            raise RelayError(f"gpiochip relays: cannot read GPIO{offset} on {self.path}: {err.strerror}") from None
        return LineInfo(offset, bool(flags & FLAG_USED), bool(flags & FLAG_OUTPUT), _text(consumer))

    def request_outputs(self, offsets: tuple, levels: tuple, consumer: str = CONSUMER) -> int:
        """Claim `offsets` as outputs at `levels` in one request; returns its descriptor. The kernel sets each
        level before it makes the line an output, so a line already driven at that level does not change."""
        bits = sum(1 << index for index, level in enumerate(levels) if level)
        mask = (1 << len(offsets)) - 1
        attribute = _ATTRIBUTE.pack(_ATTR_OUTPUT_VALUES, 0, bits, mask)
        request = bytearray(_REQUEST.pack(*offsets, *([0] * (64 - len(offsets))), consumer.encode()[:31],
                                          FLAG_OUTPUT, 1, len(offsets), 0, -1))
        attrs_at = 64 * 4 + 32 + 8 + 4 + 20  # offsets, consumer, config.flags, config.num_attrs, padding
        request[attrs_at:attrs_at + _ATTRIBUTE.size] = attribute
        try:
            fcntl.ioctl(self.fd, GET_LINE, request)
        except OSError as err:
            raise RelayError(self._refusal(offsets, err)) from None
        return int(_REQUEST.unpack(bytes(request))[-1])

    def _refusal(self, offsets: tuple, err: OSError) -> str:
        if err.errno == errno.EBUSY:
            for offset in offsets:
                info = self.line_info(offset)
                if info.used:
                    return held_elsewhere(offset, info.consumer)
        names = ", ".join(f"GPIO{offset}" for offset in offsets)
        return f"gpiochip relays: cannot drive {names} on {self.path}: {err.strerror}"


def held_elsewhere(offset: int, consumer: str) -> str:
    holder = f"'{consumer}'" if consumer else "a program that gave no name"
    return (f"GPIO{offset} is in use by {holder}; another program holds this relay's pin. Stop it, or choose other "
            f"pins (relays.pins); check with: gpioinfo | grep -w GPIO{offset}")


def read_driven(chip: Chip, pins: tuple, ours: tuple = ()) -> tuple | None:
    """None when any pin is not an output; else one None per pin, since a level cannot be read from the kernel
    without claiming the line. A pin that another program holds (not one of `ours`) is an error naming it."""
    infos = [chip.line_info(pin) for pin in pins]
    for info in infos:
        if info.used and info.offset not in ours:
            raise RelayError(held_elsewhere(info.offset, info.consumer))
    if not all(info.output for info in infos):
        return None
    return tuple(None for _ in pins)


def set_values(request_fd: int, levels: tuple) -> None:
    """Drive every line of a request held open, such as the hold service's."""
    bits = sum(1 << index for index, level in enumerate(levels) if level)
    try:
        fcntl.ioctl(request_fd, SET_VALUES, _VALUES.pack(bits, (1 << len(levels)) - 1))
    except OSError as err:
        raise RelayError(f"gpiochip relays: cannot set levels: {err.strerror}") from None


def chip_paths() -> list:
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    # udev's compatibility links (a Pi 5's gpiochip4 -> gpiochip0) would show one chip twice.
    found = [name for name in names if name.startswith("gpiochip") and name[8:].isdigit()
             and not os.path.islink(f"/dev/{name}")]
    return [f"/dev/{name}" for name in sorted(found, key=lambda name: int(name[8:]))]


def header_chip() -> Chip:
    """The chip that drives the 40-pin header, found by its label, never by guessing its number."""
    seen = []
    for path in chip_paths():
        try:
            chip = Chip(path)
        except RelayError:
            continue
        if chip.label in HEADER_LABELS:
            return chip
        seen.append(f"{path} ({chip.label})")
        chip.close()
    if not seen:
        raise RelayError("gpiochip relays: this machine has no GPIO character device (/dev/gpiochip*); "
                         "is this a Raspberry Pi?")
    raise RelayError(f"gpiochip relays: none of the GPIO chips is a Raspberry Pi header controller "
                     f"({', '.join(HEADER_LABELS)}); found {', '.join(seen)}")


class GpiochipBackend:
    """Relays through the kernel's uAPI directly: any Pi with a 5.10+ kernel, no GPIO library needed."""

    def __init__(self) -> None:
        self.chip = header_chip()
        self.consumer = CONSUMER
        self.held: dict = {}  # pins tuple -> request fd, kept open only by a long-lived process

    def read(self, pins: tuple) -> tuple | None:
        return read_driven(self.chip, pins, ours=tuple(pin for held in self.held for pin in held))

    def _ours(self, pin: int) -> bool:
        return any(pin in pins for pins in self.held)

    def write(self, pins: tuple, levels: tuple) -> None:
        """Drive `pins` at `levels`; the request is kept, so a long-lived holder can change levels in place."""
        held = self.held.get(pins)
        if held is not None:
            set_values(held, levels)
            return
        if any(self._ours(pin) for pin in pins):  # a different subset of held lines: hand them all back first
            for fd in self.held.values():
                os.close(fd)
            self.held.clear()
        self.held[pins] = self.chip.request_outputs(pins, levels, self.consumer)


def open_backend(state_dir: str) -> GpiochipBackend:
    return GpiochipBackend()
