"""The `script` collector: any program that prints `WATTS` or `WATTS UNIX_TIMESTAMP`, optionally followed by
`consumption=W` and/or `net=W` (the household's consumption, the net flow at the meter, < 0 = export) for the
surplus basis. Named fields rather than a third positional one, so a script that has consumption but no
timestamp can say so, and the old forms read exactly as before.

The command line is restricted to a safe alphabet and run without a shell, as in the original dreadpi, so a
config value can never smuggle in shell syntax that the root-owned cycle would interpret.
"""

from __future__ import annotations

import re

from dreadpi.collectors import Context, Invocation
from dreadpi.errors import CollectorError
from dreadpi.reading import Reading
from dreadpi.schema import Field

_ALLOWED = re.compile(r"[A-Za-z0-9 _./-]+")


def parse_command(text: str) -> tuple:
    value = text.strip()
    if not value:
        raise ValueError("expected a command line such as /usr/bin/shuf -i 0-1100 -n 1")
    if not _ALLOWED.fullmatch(value):
        bad = sorted({ch for ch in value if not _ALLOWED.fullmatch(ch)})
        raise ValueError(f"may only contain A-Z a-z 0-9 space _ - . /; found {' '.join(repr(c) for c in bad)}")
    argv = tuple(value.split())
    if not argv[0].startswith("/"):
        raise ValueError(f"the program must be an absolute path (collectors run with no PATH), got {argv[0]!r}")
    return argv


class ScriptCollector:
    name = "script"
    secret_keys = ()
    schema = {
        "command": Field(parse_command, doc="program and arguments printing WATTS or WATTS UNIX_TIMESTAMP, "
                                             "optionally then consumption=W and/or net=W; characters A-Za-z0-9 "
                                             "space _-./ only, no shell"),
    }

    def check(self, settings: dict, policy: dict) -> list:
        return []

    def plan(self, ctx: Context) -> Invocation:
        return Invocation(argv=ctx.settings["command"])

    def parse(self, stdout: bytes, ctx: Context) -> Reading:
        try:
            text = stdout.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CollectorError("output is not plain text") from None
        words = text.split()
        fields = [word for word in words if "=" not in word]
        named = [word for word in words if "=" in word]
        if not 1 <= len(fields) <= 2 or words[:len(fields)] != fields:
            shown = text[:40] + ("..." if len(text) > 40 else "")
            raise CollectorError(f"expected WATTS or WATTS UNIX_TIMESTAMP, got {shown!r} (either may be followed "
                                 "by consumption=W and net=W)")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise CollectorError(f"expected numbers, got {' '.join(fields)[:40]!r}") from None
        extra = _named(named)
        return Reading(watts=values[0], at=values[1] if len(values) == 2 else ctx.now, source=self.name,
                       extra=extra or None)


_NAMED = {"consumption": "consumption_watts", "net": "net_watts"}


def _named(words: list) -> dict:
    """`consumption=420 net=-130` -> the reading's extra figures; anything else is an error naming it."""
    import math

    extra: dict = {}
    for word in words:
        key, _, value = word.partition("=")
        if key not in _NAMED or _NAMED[key] in extra:
            raise CollectorError(f"unexpected field {word[:30]!r}: only consumption=W and net=W, once each")
        try:
            number = float(value)
        except ValueError:
            raise CollectorError(f"{key}= expects watts, got {value[:20]!r}") from None
        if not math.isfinite(number) or (key == "consumption" and number < 0):
            raise CollectorError(f"{key}= is not a plausible figure ({value[:20]!r})")
        extra[_NAMED[key]] = number
    return extra


COLLECTOR = ScriptCollector()
