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

    def read(self, pins: tuple) -> tuple | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                levels = json.load(handle)
            return tuple(int(levels[str(pin)]) for pin in pins)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # never driven, or not these pins: like a Pi after a reboot

    def write(self, pins: tuple, levels: tuple) -> None:
        try:
            levels_json = json.dumps({str(p): int(v) for p, v in zip(pins, levels)}) + "\n"
            write_atomic(self.path, levels_json, 0o644, durable=False)  # real pins forget at power-off too
        except OSError as err:
            raise RelayError(f"sim relays: cannot write {self.path}: {err.strerror}") from None


def open_backend(state_dir: str) -> SimBackend:
    return SimBackend(os.path.join(state_dir, FILENAME))
