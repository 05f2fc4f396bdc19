"""A relay board that is a JSON file: for demos, tests and any machine without GPIO."""

from __future__ import annotations

import json
import os

from dreadpi.errors import RelayError
from dreadpi.state import write_atomic

FILENAME = "sim-pins.json"


class SimBackend:
    def __init__(self, path: str) -> None:
        self.path = path

    def _levels(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                levels = json.load(handle)
        except (OSError, ValueError):
            return {}
        return levels if isinstance(levels, dict) else {}

    def read(self, pins: tuple) -> tuple | None:
        levels = self._levels()
        try:
            return tuple(int(levels[str(pin)]) for pin in pins)
        except (KeyError, TypeError, ValueError):
            return None  # never driven, or not these pins: like a Pi after a reboot

    def write(self, pins: tuple, levels: tuple) -> None:
        """Drive `pins`; the others keep their levels, as on a real header."""
        merged = self._levels()
        merged.update({str(p): int(v) for p, v in zip(pins, levels)})
        try:
            write_atomic(self.path, json.dumps(merged, sort_keys=True) + "\n", 0o644, durable=False)
        except OSError as err:
            raise RelayError(f"sim relays: cannot write {self.path}: {err.strerror}") from None


def open_backend(state_dir: str) -> SimBackend:
    return SimBackend(os.path.join(state_dir, FILENAME))
