"""The `envoy` collector: the Enphase IQ Gateway on the LAN (firmware 7+), real time and without a quota.

Its certificate is self-signed, so it is pinned by SHA-256 fingerprint: `cert_sha256` when configured, else the
one seen on first contact, recorded in the state dir (trust on first use, like SSH host keys).
"""

from __future__ import annotations

import re
import time

from dreadpi.collectors import Context, Invocation, api
from dreadpi.errors import CollectorError
from dreadpi.reading import Reading
from dreadpi.schema import Field, text

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEX = re.compile(r"[0-9a-f]{64}")


def parse_host(raw: str) -> str:
    """A host name or an IP address: no scheme, port or path (those are fixed in code)."""
    import ipaddress

    value = raw.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if name and len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split(".")) \
            and not name.replace(".", "").isdigit():
        return name.lower()
    raise ValueError(f"expected the gateway's host name or IP address (such as envoy.local or 192.168.1.50), "
                     f"without https:// or a path; got {value!r}")


def parse_fingerprint(raw: str) -> str:
    """64 hex digits, with or without colons (as openssl and browsers show them); empty = learn on first use."""
    value = raw.strip().lower().replace(":", "")
    if value and not _HEX.fullmatch(value):
        raise ValueError("expected a SHA-256 fingerprint: 64 hex digits, colons allowed, or empty to record the "
                         f"gateway's on first contact; got {raw.strip()[:100]!r}")
    return value


class EnvoyCollector:
    name = "envoy"
    secret_keys = ("token",)
    schema = {
        "host": Field(parse_host, doc="the gateway's host name or IP address on the LAN"),
        "token": Field(text(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
                            "an Enphase owner token (a JWT from entrez.enphaseenergy.com)", secret=True),
                       doc="the owner token (JWT, valid about a year); secret"),
        "cert_sha256": Field(parse_fingerprint, "", "SHA-256 fingerprint of the gateway's certificate; empty = "
                                                    "record it on first contact and refuse any other later"),
    }

    def check(self, settings: dict, policy: dict) -> list:
        return []

    def _learned(self, ctx: Context) -> dict | None:
        stored = api.Store(ctx.state_dir, self.name).read("cert")
        if stored and stored.get("host") == ctx.settings["host"] and _HEX.fullmatch(str(stored.get("sha256"))):
            return stored
        return None

    def plan(self, ctx: Context) -> Invocation:
        pinned = ctx.settings["cert_sha256"]
        if not pinned:
            learned = self._learned(ctx)
            pinned = learned["sha256"] if learned else ""
        wanted = {"host": ctx.settings["host"], "token": ctx.settings["token"], "pinned": pinned}
        return api.invocation(self.name, wanted, ctx.timeout)

    def parse(self, stdout: bytes, ctx: Context) -> Reading:
        result = api.decode(stdout)
        store = api.Store(ctx.state_dir, self.name)
        host = ctx.settings["host"]
        seen = result.get("fingerprint")
        if isinstance(seen, str) and _HEX.fullmatch(seen) and not ctx.settings["cert_sha256"]:
            store.write("cert", {"host": host, "sha256": seen, "first_seen": time.time()})
            ctx.notes.append(f"recorded the certificate of {host} on first contact: SHA-256 {seen} "
                             f"(in {store.path('cert')}); set envoy.cert_sha256 to pin it explicitly")
        ctx.notes.extend(api.warnings(result))
        failure = api.error(result)
        if failure:
            if isinstance(result.get("fingerprint_seen"), str):
                if ctx.settings["cert_sha256"]:
                    failure += "; if the gateway was replaced, put the new fingerprint in envoy.cert_sha256"
                else:
                    failure += (f" (recorded on first contact in {store.path('cert')}); if the gateway was "
                                "replaced, delete that file to accept the new certificate")
            raise CollectorError(failure)
        return api.reading(result, self.name)


COLLECTOR = EnvoyCollector()
