"""The registry of collectors: where a reading can come from.

A collector only fetches. It says how to start its sandboxed process and how to read what that process
printed; the sandbox, validation and failsafe are the cycle's business. Modules are imported only when
needed, so a cycle using the script collector never loads an HTTP client.
"""

from __future__ import annotations

import importlib
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from dreadpi.reading import Reading

    class Collector(Protocol):
        name: str
        schema: dict

        def check(self, settings: dict) -> list:
            """Problems between keys, as `key: problem`; single values are checked by the schema."""

        def invocation(self, settings: dict) -> Invocation:
            """How to run this collector with its own settings, and nothing else."""

        def parse(self, stdout: bytes, now: float) -> Reading:
            """Turn the process's output into a reading; raise CollectorError with the cause otherwise."""

# Source name (also its INI section) -> module defining COLLECTOR.
_MODULES = {
    "script": "dreadpi.collectors.script",
}

NAMES = tuple(_MODULES)


class Invocation(namedtuple("Invocation", ("argv", "stdin"), defaults=(b"",))):
    """What the sandbox runs: argv (no shell), and bytes for its stdin (the only place settings travel)."""

    __slots__ = ()
    argv: tuple
    stdin: bytes


def get(name: str) -> Collector:
    return importlib.import_module(_MODULES[name]).COLLECTOR  # type: ignore[no-any-return]
