"""Relay boards: a mode's pattern (which relays are energised) becomes pin levels through a backend.

Backends only read and write pin levels; polarity, patterns and which pins need to change live here, so every
backend behaves the same: a pin is written only when its relay must change, and only with the level it needs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Backend(Protocol):
        def read(self, pins: tuple) -> tuple | None:
            """None when any pin is not driven as an output; else each pin's level, or None for a pin that is
            driven at a level the backend cannot read without disturbing it."""

        def write(self, pins: tuple, levels: tuple) -> None:
            """Drive each pin as an output at its level, and leave it driven after the process exits."""

_BACKENDS = {
    "sim": "dreadpi.relays.sim",
    "rpi-gpio": "dreadpi.relays.rpi_gpio",
    "gpiochip": "dreadpi.relays.gpiochip",
}


def open_backend(name: str, state_dir: str) -> Backend:
    return importlib.import_module(_BACKENDS[name]).open_backend(state_dir)  # type: ignore[no-any-return]


def open_relays(settings, state_dir: str) -> tuple:  # noqa: ANN001 (config.RelaySettings)
    """(board, note): the backend for these settings, through the relay hold service where gpiochip lines need
    one to stay driven between cycles (dreadpi.relays.hold decides, and says why in `note`)."""
    if settings.backend == "sim":
        backend, note = open_backend("sim", state_dir), None
    else:
        from dreadpi.relays.hold import choose

        backend, note = choose(settings, state_dir)
    return Board(backend, settings.pins, settings.active_low), note


class Board:
    """Relays on pins, energised by HIGH or, with `active_low`, by LOW."""

    def __init__(self, backend: Backend, pins: tuple, active_low: bool) -> None:
        self.backend = backend
        self.pins = pins
        self.active_low = active_low

    def levels(self, pattern: tuple) -> tuple:
        return tuple(int(bool(bit) != self.active_low) for bit in pattern)

    def pattern(self, levels: tuple | None) -> tuple | None:
        """The energised pattern these levels assert; None (not driven) when any level is unknown."""
        if levels is None or any(level is None for level in levels):
            return None
        return tuple(int(bool(level) != self.active_low) for level in levels)

    def current(self, trusted: tuple | None = None) -> tuple | None:
        """The levels the pins are driven at: what the backend reads, and for pins it cannot read, `trusted`
        (the levels this dreadpi drove them to since the last boot). None when any pin is not an output."""
        levels = self.backend.read(self.pins)
        if levels is None:
            return None
        if trusted is not None and len(trusted) == len(levels):
            levels = tuple(mine if level is None else level for level, mine in zip(levels, trusted))
        return tuple(levels)

    def drive(self, pattern: tuple, current: tuple | None = None) -> tuple:
        """Energise the relays in `pattern`, writing only the pins whose level must change (all of them when
        `current` is None or unknown). Relays that energise go first: with cascade wiring the board then passes
        through the more restrictive of the two modes, never through drm0. Returns the levels the pins now have."""
        levels = self.levels(pattern)
        known = current if current is not None else (None,) * len(levels)
        changes = [index for index, level in enumerate(levels) if known[index] != level]
        if changes:
            changes.sort(key=lambda index: not pattern[index])  # energised first
            self.backend.write(tuple(self.pins[i] for i in changes), tuple(levels[i] for i in changes))
        return levels

    def read_pattern(self) -> tuple | None:
        return self.pattern(self.current())
