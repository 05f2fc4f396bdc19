"""A solar generation reading, as the collectors report it and the policy judges it."""

from __future__ import annotations

import math
from collections import namedtuple

# Timestamps outside these bounds are a broken clock or a broken parser, never a real measurement.
EARLIEST = 946684800.0  # 2000-01-01T00:00:00Z
LATEST = 4102444800.0  # 2100-01-01T00:00:00Z


class Reading(namedtuple("Reading", ("watts", "at", "source", "extra"), defaults=("", None))):
    """Generation in watts at `at` (Unix seconds). `extra` holds optional figures such as consumption.

    A namedtuple rather than a dataclass: importing dataclasses costs a Pi Zero more than the whole cycle.
    """

    __slots__ = ()
    watts: float
    at: float
    source: str
    extra: dict | None

    def problem(self, max_watts: float = math.inf) -> str | None:
        """Why this reading must not be acted on, or None when it is plausible."""
        if not isinstance(self.watts, (int, float)) or isinstance(self.watts, bool):
            return f"watts is not a number ({self.watts!r})"
        if not math.isfinite(self.watts):
            return f"watts is not finite ({self.watts!r})"
        if self.watts < 0:
            return f"watts is negative ({self.watts:g})"
        if self.watts > max_watts:
            return f"watts {self.watts:g} exceeds max_watts {max_watts:g}"
        if not isinstance(self.at, (int, float)) or isinstance(self.at, bool) or not math.isfinite(self.at):
            return f"timestamp is not a number ({self.at!r})"
        if not EARLIEST <= self.at <= LATEST:
            return f"timestamp {self.at:.0f} is not between the years 2000 and 2100"
        return None
