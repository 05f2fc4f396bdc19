"""Enphase IQ Gateway (Envoy) production.json on the LAN, inside the sandbox (see fetch_common).

The gateway's certificate is self-signed, so it is trusted by its SHA-256 fingerprint: the bearer token is
sent only over a connection whose certificate matched the pin during the handshake (urllib3's
assert_fingerprint checks it before the request is written). With no pin yet, the fingerprint is read over a
connection that sends nothing, the request is pinned to it, and the parent stores it for next time.
"""

from __future__ import annotations

import fetch_common as common
from fetch_common import Failure

PATH = "/production.json?details=1"  # fixed in code; only the host is configurable
PORT = 443
NIGHT_NOISE = 100.0  # W: negative production down to this is meter noise at night, read as 0


def work(settings: dict, result: dict) -> None:
    host = settings["host"]
    deadline = common.Deadline(settings["budget"])
    pinned = settings.get("pinned") or ""
    if not pinned:
        pinned = common.fingerprint_of(host, PORT, deadline)
        result["fingerprint"] = pinned
    s = common.session(_pinned_adapter(pinned))
    url = f"https://{'[' + host + ']' if ':' in host else host}{PATH}"
    try:
        answer = common.fetch(s, "GET", url, host, deadline, {"Authorization": f"Bearer {settings['token']}"},
                              verify=False)
    except Failure as err:
        if "fingerprint" in str(err):
            seen = common.fingerprint_of(host, PORT, deadline)
            if seen != pinned:
                result["fingerprint_seen"] = seen
                raise Failure(f"certificate of {host} has SHA-256 {seen}, not the pinned {pinned}") from None
        raise
    if answer.status in (401, 403):
        raise Failure(f"token refused (HTTP {answer.status}); owner tokens expire after about a year: get a new "
                      "one at https://entrez.enphaseenergy.com and set envoy.token")
    if answer.status == 503:
        raise Failure("the gateway is starting up (HTTP 503); the next cycle tries again")
    if answer.status != 200:
        raise Failure(f"HTTP {answer.status} {answer.first_line(60)!r}")
    if answer.content_type != "application/json":
        raise Failure(f"the gateway answered {answer.content_type or 'without a content type'}, not JSON "
                      "(old firmware, or an error page)")
    body = answer.json("the gateway")
    if not isinstance(body, dict) or not isinstance(body.get("production"), list):
        raise Failure("production.json has no production list")
    entry = _production_entry(body["production"])
    watts = common.number(entry.get("wNow"), f"{entry.get('type')} wNow")
    if watts < 0:
        if watts < -NIGHT_NOISE:
            raise Failure(f"production is {watts:.0f} W; more negative than night-time noise")
        watts = 0.0
    result["watts"] = watts
    result["at"] = common.number(entry.get("readingTime"), f"{entry.get('type')} readingTime")
    result["extra"] = _consumption(body.get("consumption"))


def _production_entry(entries: list) -> dict:
    """The metered (eim) entry when a production CT is fitted, else the inverters' own report."""
    inverters = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "eim" and entry.get("measurementType", "production") == "production":
            active = entry.get("activeCount")
            if isinstance(active, int) and not isinstance(active, bool) and active > 0:
                return entry
        elif entry.get("type") == "inverters":
            inverters = entry
    if inverters is None:
        raise Failure("production.json has neither a metered (eim) nor an inverters entry")
    return inverters


def _consumption(entries: object) -> dict:
    """Whole-house consumption and net grid flow (negative = exporting), when consumption CTs are fitted."""
    names = {"total-consumption": "consumption_watts", "net-consumption": "net_watts"}
    extra: dict = {}
    if not isinstance(entries, list):
        return extra
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("measurementType") not in names:
            continue
        active = entry.get("activeCount")
        if isinstance(active, int) and not isinstance(active, bool) and active > 0:
            extra[names[entry["measurementType"]]] = common.number(entry.get("wNow"), entry["measurementType"])
    return extra


def _pinned_adapter(fingerprint: str) -> object:
    import requests.adapters

    class Pinned(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: object, **kwargs: object) -> None:
            kwargs["assert_fingerprint"] = fingerprint
            kwargs["assert_hostname"] = False
            super().init_poolmanager(*args, **kwargs)

    return Pinned(max_retries=0)


def run() -> None:
    common.main(work)
