"""Relays on a Raspberry Pi's GPIO header through RPi.GPIO (Debian package python3-rpi.gpio).

Never calls GPIO.cleanup(): cron starts a new process each cycle, and the levels must stay driven in between.
"""

from __future__ import annotations

from dreadpi.errors import RelayError


class RpiGpioBackend:
    def __init__(self) -> None:
        try:
            import RPi.GPIO as gpio
        except ImportError:
            raise RelayError("rpi-gpio relays: RPi.GPIO is not installed; run: apt install python3-rpi.gpio") from None
        except RuntimeError as err:  # "This module can only be run on a Raspberry Pi!"
            raise RelayError(f"rpi-gpio relays: {err}") from None
        self.gpio = gpio
        try:
            gpio.setwarnings(False)
            gpio.setmode(gpio.BCM)
        except (RuntimeError, ValueError) as err:
            raise RelayError(f"rpi-gpio relays: {err}") from None

    def read(self, pins: tuple) -> tuple | None:
        gpio = self.gpio
        try:
            if any(gpio.gpio_function(pin) != gpio.OUT for pin in pins):
                return None  # after a reboot the pins are inputs again
            levels = []
            for pin in pins:
                # RPi.GPIO reads only channels set up in this process. The pin is already an output, and setup
                # without `initial` leaves its output latch alone, so this changes nothing on the header.
                gpio.setup(pin, gpio.OUT)
                levels.append(int(gpio.input(pin)))
            return tuple(levels)
        except (RuntimeError, ValueError) as err:
            raise RelayError(f"rpi-gpio relays: cannot read pins: {err}") from None

    def write(self, pins: tuple, levels: tuple) -> None:
        gpio = self.gpio
        try:
            for pin, level in zip(pins, levels):
                # The initial level is written before the pin becomes an output, so it never glitches.
                gpio.setup(pin, gpio.OUT, initial=gpio.HIGH if level else gpio.LOW)
                gpio.output(pin, gpio.HIGH if level else gpio.LOW)
        except (RuntimeError, ValueError) as err:
            raise RelayError(f"rpi-gpio relays: cannot drive pins: {err}") from None


def open_backend(state_dir: str) -> RpiGpioBackend:
    return RpiGpioBackend()
