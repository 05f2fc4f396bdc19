"""Relays through the RPi.GPIO module, whichever Debian package provides it.

Two packages do, and they cannot be installed together: python3-rpi.gpio (register access through /dev/gpiomem;
every Pi but the Pi 5) and python3-rpi-lgpio (Raspberry Pi OS's choice since late 2024: the same API on the
kernel's gpiochip device through lgpio; every Pi, the Pi 5 included). Their reads differ in one way that matters
here: rpi-lgpio's `setup(pin, OUT)` without `initial`, and its `input()` on a line it has not claimed, claim the
line as an input first, which drops an energised relay. So under rpi-lgpio nothing is read through RPi.GPIO: the
kernel's line info says whether a pin is still an output, and a pin is only ever claimed with the level its relay
needs (`setup(..., initial=level)`).

Never calls GPIO.cleanup(): cron starts a new process each cycle, and the levels must stay driven in between.
"""

from __future__ import annotations

import os

from dreadpi import hardware
from dreadpi.errors import RelayError

REGISTER = "python3-rpi.gpio"
GPIOCHIP = "python3-rpi-lgpio"


def provider() -> str | None:
    """Which package's RPi.GPIO is installed, found without importing it (importing rpi-lgpio opens a chip)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("RPi.GPIO")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    package_dir = os.path.dirname(os.path.dirname(spec.origin))  # .../RPi
    try:
        register = any(name.startswith("_GPIO") for name in os.listdir(package_dir))
    except OSError:
        register = False
    return REGISTER if register else GPIOCHIP


class RpiGpioBackend:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chip = None
        self._gpio = None
        if kind == GPIOCHIP:
            from dreadpi.relays.gpiochip import header_chip

            self.chip = header_chip()
            # rpi-lgpio takes the chip number from here; the label found it, whatever this kernel numbers it.
            os.environ.setdefault("RPI_LGPIO_CHIP", self.chip.path[len("/dev/gpiochip"):])
            return  # RPi.GPIO (and lgpio) only when a pin must change: most cycles change none
        if hardware.has_rp1(hardware.revision()):
            raise RelayError(f"rpi-gpio relays: this {hardware.model() or 'Raspberry Pi 5'} has its header on the "
                             f"RP1 chip, which {REGISTER} (register access) cannot drive. Set relays.backend = "
                             f"gpiochip (needs no library), or install {GPIOCHIP} from the Raspberry Pi OS archive")
        self.gpio  # noqa: B018 (register access reads through the library: import it now, failing clearly)

    @property
    def gpio(self):  # noqa: ANN201 (the RPi.GPIO module)
        if self._gpio is not None:
            return self._gpio
        try:
            import RPi.GPIO as gpio
        except ImportError:
            raise RelayError("rpi-gpio relays: RPi.GPIO is not installed; run: apt install python3-rpi-lgpio "
                             "(Raspberry Pi OS) or python3-rpi.gpio (Debian), or set relays.backend = gpiochip"
                             ) from None
        except RuntimeError as err:  # "This module can only be run on a Raspberry Pi!"
            raise RelayError(f"rpi-gpio relays: {err}") from None
        try:
            gpio.setwarnings(False)
            gpio.setmode(gpio.BCM)
        except (RuntimeError, ValueError) as err:
            raise RelayError(f"rpi-gpio relays: {err}") from None
        self._gpio = gpio
        return gpio

    def read(self, pins: tuple) -> tuple | None:
        if self.chip is not None:
            return self._read_line_info(pins)
        gpio = self.gpio
        try:
            if any(gpio.gpio_function(pin) != gpio.OUT for pin in pins):
                return None  # after a reboot the pins are inputs again
            levels = []
            for pin in pins:
                # Register access reads only channels set up in this process. The pin is already an output, and
                # setup without `initial` leaves its output latch alone, so this changes nothing on the header.
                gpio.setup(pin, gpio.OUT)
                levels.append(int(gpio.input(pin)))
            return tuple(levels)
        except (RuntimeError, ValueError) as err:
            raise RelayError(f"rpi-gpio relays: cannot read pins: {err}") from None

    def _read_line_info(self, pins: tuple) -> tuple | None:
        from dreadpi.relays.gpiochip import read_driven

        return read_driven(self.chip, pins)

    def write(self, pins: tuple, levels: tuple) -> None:
        gpio = self.gpio
        import sys

        library_error = getattr(sys.modules.get("lgpio"), "error", RuntimeError)  # rpi-lgpio lets lgpio's through
        try:
            for pin, level in zip(pins, levels):
                # `initial` is written before the pin becomes an output (register access), or given with the claim
                # (rpi-lgpio), so the pin never shows another level on the way.
                gpio.setup(pin, gpio.OUT, initial=gpio.HIGH if level else gpio.LOW)
        except (RuntimeError, ValueError, library_error) as err:
            if self.chip is not None and "busy" in str(err).lower():
                from dreadpi.relays.gpiochip import held_elsewhere

                for pin in pins:
                    info = self.chip.line_info(pin)
                    if info.used:
                        raise RelayError(held_elsewhere(pin, info.consumer)) from None
            raise RelayError(f"rpi-gpio relays: cannot drive pins: {err}") from None


def open_backend(state_dir: str) -> RpiGpioBackend:
    kind = provider()
    if kind is None:
        raise RelayError("rpi-gpio relays: RPi.GPIO is not installed; run: apt install python3-rpi-lgpio "
                         "(Raspberry Pi OS) or python3-rpi.gpio (Debian), or set relays.backend = gpiochip")
    return RpiGpioBackend(kind)
