"""The `pvoutput` collector: the latest status of a PVOutput system (getstatus), one request a cycle.

PVOutput allows 60 requests an hour (300 with a donation); the original 15-minute schedule uses 4.
"""

from __future__ import annotations

import os
import re

from dreadpi.collectors import Context, Invocation, api
from dreadpi.errors import CollectorError
from dreadpi.reading import Reading
from dreadpi.schema import Field, text

ZONEINFO = "/usr/share/zoneinfo"
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")


def parse_zone(raw: str) -> str:
    """An IANA zone name that exists here, or empty for the Pi's own zone."""
    value = raw.strip()
    if not value:
        return ""
    if not _ZONE.fullmatch(value) or not os.path.isfile(os.path.join(ZONEINFO, value)):
        raise ValueError(f"expected a time zone name such as Australia/Sydney (see {ZONEINFO}), got {value!r}")
    return value


class PvoutputCollector:
    name = "pvoutput"
    secret_keys = ("api_key",)
    schema = {
        "api_key": Field(text(r"[A-Za-z0-9:_-]{8,128}", "a PVOutput API key (Settings > API Access)", secret=True),
                         doc="the API key of the account (read-only keys work); secret"),
        "system_id": Field(text(r"[1-9][0-9]{0,9}", "a numeric PVOutput system id"),
                           doc="the system to read (Settings > Registered Systems: System Id)"),
        "timezone": Field(parse_zone, "", "the PV system's time zone, in which PVOutput reports times; "
                                          "empty = this Pi's zone"),
    }

    def check(self, settings: dict, policy: dict) -> list:
        return []

    def plan(self, ctx: Context) -> Invocation:
        wanted = {key: ctx.settings[key] for key in ("api_key", "system_id", "timezone")}
        return api.invocation(self.name, wanted, ctx.timeout)

    def parse(self, stdout: bytes, ctx: Context) -> Reading:
        result = api.decode(stdout)
        ctx.notes.extend(api.warnings(result))
        failure = api.error(result)
        if failure:
            raise CollectorError(failure, api.problem(result))
        return api.reading(result, self.name)


COLLECTOR = PvoutputCollector()
