"""Relay boards: a mode's pattern (which relays are energised) becomes pin levels through a backend.

Backends only read and write pin levels; polarity and patterns live here, so every backend behaves the same.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Backend(Protocol):
        def read(self, pins: tuple) -> tuple | None:
            """The levels the pins are driven at, or None when any pin is not driven as an output."""

        def write(self, pins: tuple, levels: tuple) -> None:
            """Drive each pin as an output at its level, and leave it driven after the process exits."""

_BACKENDS = {
    "sim": "dreadpi.relays.sim",
    "rpi-gpio": "dreadpi.relays.rpi_gpio",
}


def open_backend(name: str, state_dir: str) -> Backend:
    return importlib.import_module(_BACKENDS[name]).open_backend(state_dir)  # type: ignore[no-any-return]


class Board:
    """Relays on pins, energised by HIGH or, with `active_low`, by LOW."""

    def __init__(self, backend: Backend, pins: tuple, active_low: bool) -> None:
        self.backend = backend
        self.pins = pins
        self.active_low = active_low

    def levels(self, pattern: tuple) -> tuple:
        return tuple(int(bool(bit) != self.active_low) for bit in pattern)

    def drive(self, pattern: tuple) -> tuple:
        """Energise the relays in `pattern`; returns the pin levels written."""
        levels = self.levels(pattern)
        self.backend.write(self.pins, levels)
        return levels

    def read_pattern(self) -> tuple | None:
        levels = self.backend.read(self.pins)
        if levels is None:
            return None
        return tuple(int(bool(level) != self.active_low) for level in levels)
