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

        def check(self, settings: dict, policy: dict) -> list:
            """Problems between keys (single values are checked by the schema), as full `section.key: problem`."""

        def plan(self, ctx: Context) -> Invocation | Reading:
            """What to run in the sandbox, with this collector's settings and nothing else; or a reading already
            in hand (an API budget may forbid a call). Raises CollectorError naming the cause."""

        def parse(self, stdout: bytes, ctx: Context) -> Reading:
            """Turn the process's output into a reading; raise CollectorError with the cause otherwise."""

        # Optional: def credential_expiry(self, settings: dict, state_dir: str) -> tuple
        #     (epoch or None, what expires, how to renew it), known locally: never sends the credential.

# Source name (also its INI section) -> module defining COLLECTOR.
_MODULES = {
    "script": "dreadpi.collectors.script",
    "pvoutput": "dreadpi.collectors.pvoutput",
    "enphase": "dreadpi.collectors.enphase",
    "envoy": "dreadpi.collectors.envoy",
}

NAMES = tuple(_MODULES)


class Invocation(namedtuple("Invocation", ("argv", "stdin"), defaults=(b"",))):
    """What the sandbox runs: argv (no shell), and bytes for its stdin (the only place settings travel)."""

    __slots__ = ()
    argv: tuple
    stdin: bytes


class Context(namedtuple("Context", ("settings", "state_dir", "now", "max_age", "timeout", "notes", "secrets"))):
    """What a collector may know of one cycle: its own settings, the state dir for its own files, the time,
    the policy's max_age and the sandbox timeout. `notes` collects warnings for the error log; `secrets` the
    values no message may contain (settings' secrets plus stored tokens)."""

    __slots__ = ()
    settings: dict
    state_dir: str
    now: float
    max_age: float
    timeout: float
    notes: list
    secrets: list


def redact(message: str, secrets: list) -> str:
    """Belt and braces: collectors never quote a secret, but no message may carry one out either."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def get(name: str) -> Collector:
    return importlib.import_module(_MODULES[name]).COLLECTOR  # type: ignore[no-any-return]
