"""The `envoy` collector: the Enphase IQ Gateway on the LAN, real time and without a quota, any firmware.

Firmware 7 and later (D7.x, D8.x) answer HTTPS only, with the owner token. Their certificate is self-signed,
so it is pinned by SHA-256 fingerprint: `cert_sha256` when configured, else the one seen on first contact,
recorded in the state dir (trust on first use, like SSH host keys). The token is sent only over a connection
whose certificate matched the pin during the handshake.

Firmware before 7 (Envoy-R R3.x and D3.x, early Envoy-S D4.x/D5.x) answers plain HTTP and knows no token, so
the token may be empty for those gateways. The watts come from /api/v1/production; the reading time from the
newest report in /api/v1/production/inverters, which some of these firmwares guard with HTTP digest auth
(user `envoy`, password the serial number's last six digits; or user `installer`, password derived from the
serial by Enphase's published rule); consumption from /production.json where the gateway has a meter. Plain
HTTP is all those firmwares offer, so nothing can be pinned: their readings are as trustworthy as the LAN.
The token never goes over plain HTTP, and a gateway once seen on HTTPS is not believed when it later claims
old firmware over plain HTTP, which is what an impostor on the LAN would do.

Which firmware the gateway runs is read from its /info (XML, no token) once and recorded in the state dir
beside the certificate (root writes both, 0600), so cycles cost no extra request; the child reads /info
again when the gateway's answers stop fitting (after an upgrade the plain-HTTP API redirects to HTTPS or
asks for a login). The record holds the serial number; the passwords derived from it are secrets like the
token, added to the cycle's secrets so that no message can carry them.
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
_JWT = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
_SOFTWARE = re.compile(r"[A-Za-z]{0,3}\d{1,3}\.[0-9A-Za-z._-]{0,30}")
_SERIAL = re.compile(r"[0-9]{6,20}")
GENERATIONS = ("legacy", "modern")
INVERTER_AUTH = ("none", "envoy", "installer", "unavailable")
FAMILY = {
    "legacy": "before 7: plain HTTP, no token",
    "modern": "7 or later: HTTPS with the owner token",
}


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


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (epoch seconds), or None when the token has none or is not a JWT."""
    import base64
    import json

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp > 0 else None


def derived_passwords(serial: str) -> list:
    """The digest passwords firmware before 7 derives from `serial` (see fetch_envoy), for redaction only."""
    if not serial:
        return []
    from dreadpi.collectors import fetch_envoy  # hashlib and a few lines; only when a serial is known

    return [fetch_envoy.envoy_password(serial), fetch_envoy.installer_password(serial)]


class EnvoyCollector:
    name = "envoy"
    secret_keys = ("token",)
    schema = {
        "host": Field(parse_host, doc="the gateway's host name or IP address on the LAN"),
        "token": Field(text(f"(?:{_JWT})?", "an Enphase owner token (a JWT from entrez.enphaseenergy.com), or "
                                            "nothing for firmware before 7", secret=True), "",
                       doc="the owner token (JWT, valid about a year); secret; empty for firmware before 7 (Envoy-R, "
                           "early Envoy-S), which needs none"),
        "cert_sha256": Field(parse_fingerprint, "", "SHA-256 fingerprint of the gateway's certificate; empty = "
                                                    "record it on first contact and refuse any other later"),
    }

    def check(self, settings: dict, policy: dict) -> list:
        return []

    def credential_expiry(self, settings: dict, state_dir: str) -> tuple:
        """The owner token's `exp` claim, read without verifying or sending the token anywhere."""
        return (token_expiry(settings.get("token") or ""), "the Envoy owner token",
                "get a new one at https://entrez.enphaseenergy.com and set envoy.token")

    def advice(self, settings: dict) -> list:
        """Notes for `check-config`: not problems, but what these settings imply."""
        if settings.get("token"):
            return []
        return ["envoy.token is empty: that works only with gateway firmware before 7 (Envoy-R, early Envoy-S), "
                "which answers plain HTTP without a token; firmware 7 and later needs an owner token from "
                "https://entrez.enphaseenergy.com"]

    # -- what the state dir remembers ---------------------------------------------------------------------------

    def _learned(self, ctx: Context) -> dict | None:
        stored = api.Store(ctx.state_dir, self.name).read("cert")
        if stored and stored.get("host") == ctx.settings["host"] and _HEX.fullmatch(str(stored.get("sha256"))):
            return stored
        return None

    def _firmware(self, ctx: Context) -> dict | None:
        """The recorded firmware of this host, or None (none yet, another host, or a record that does not fit)."""
        stored = api.Store(ctx.state_dir, self.name).read("firmware")
        if not stored or stored.get("host") != ctx.settings["host"]:
            return None
        return _valid_firmware(stored)

    # -- the cycle ----------------------------------------------------------------------------------------------

    def plan(self, ctx: Context) -> Invocation:
        pinned = ctx.settings["cert_sha256"]
        learned = None if pinned else self._learned(ctx)
        pinned = pinned or (learned["sha256"] if learned else "")
        firmware = self._firmware(ctx)
        if firmware:
            ctx.secrets.extend(derived_passwords(firmware["serial"]))
        wanted = {"host": ctx.settings["host"], "token": ctx.settings["token"], "pinned": pinned,
                  "firmware": firmware, "seen_modern": bool(firmware and firmware["generation"] == "modern")}
        return api.invocation(self.name, wanted, ctx.timeout)

    def parse(self, stdout: bytes, ctx: Context) -> Reading:
        result = api.decode(stdout)
        store = api.Store(ctx.state_dir, self.name)
        self._record_certificate(result, store, ctx)
        self._record_firmware(result, store, ctx)
        ctx.notes.extend(api.warnings(result))
        failure = api.error(result)
        if failure:
            raise CollectorError(failure + self._hint(result, store, ctx), api.problem(result))
        reading = api.reading(result, self.name)
        extra = result.get("extra")
        if reading.extra and "consumption_watts" in reading.extra and isinstance(extra, dict) \
                and extra.get("consumption_from") == "net+production":
            # Firmware 8.3.5433 and similar: the total-consumption meter carried the net figure.
            reading = reading._replace(extra=dict(reading.extra, consumption_from="net+production"))
        return reading

    def _record_certificate(self, result: dict, store: api.Store, ctx: Context) -> None:
        host = ctx.settings["host"]
        seen = result.get("fingerprint")
        if isinstance(seen, str) and _HEX.fullmatch(seen) and not ctx.settings["cert_sha256"]:
            store.write("cert", {"host": host, "sha256": seen, "first_seen": time.time()})
            ctx.notes.append(f"recorded the certificate of {host} on first contact: SHA-256 {seen} "
                             f"(in {store.path('cert')}); set envoy.cert_sha256 to pin it explicitly")

    def _record_firmware(self, result: dict, store: api.Store, ctx: Context) -> None:
        """Record what /info said, and which inverter-list login worked; say so when something changed."""
        host = ctx.settings["host"]
        before = self._firmware(ctx)
        info = _valid_firmware(result.get("info"))
        auth = result.get("inverters_auth")
        auth = auth if auth in INVERTER_AUTH else None
        if info is None:
            if before is None or auth is None or auth == before["inverters_auth"]:
                return
            record = dict(before, inverters_auth=auth)
        else:
            ctx.secrets.extend(derived_passwords(info["serial"]))
            record = dict(info, inverters_auth=auth)
            self._announce(before, record, store, ctx)
        store.write("firmware", dict(record, host=host, recorded_at=time.time()))

    def _announce(self, before: dict | None, now: dict, store: api.Store, ctx: Context) -> None:
        host, software = ctx.settings["host"], now["software"]
        family = FAMILY[now["generation"]]
        if before is None:
            ctx.notes.append(f"{host} runs firmware {software} ({family}); recorded in {store.path('firmware')}")
        elif (before["software"], before["generation"], before["serial"]) != (software, now["generation"],
                                                                               now["serial"]):
            ctx.notes.append(f"{host} now runs firmware {software} ({family}), no longer {before['software']}; "
                             f"recorded in {store.path('firmware')}")
        else:
            return
        if now["generation"] == "legacy" and ctx.settings["token"]:
            ctx.notes.append(f"envoy.token is set, but firmware {software} needs none; it is never sent over "
                             "plain HTTP")

    def _hint(self, result: dict, store: api.Store, ctx: Context) -> str:
        """What to do about a refused certificate or a refused downgrade; empty otherwise."""
        if result.get("downgrade") is True:
            if ctx.settings["cert_sha256"]:
                return ("; if the gateway really was replaced by one with older firmware, empty envoy.cert_sha256 "
                        f"and delete {store.path('firmware')}")
            return (f"; if the gateway really was replaced by one with older firmware, delete {store.path('cert')} "
                    f"and {store.path('firmware')}")
        if isinstance(result.get("fingerprint_seen"), str):
            if ctx.settings["cert_sha256"]:
                return "; if the gateway was replaced, put the new fingerprint in envoy.cert_sha256"
            return (f" (recorded on first contact in {store.path('cert')}); if the gateway was replaced, delete that "
                    "file to accept the new certificate")
        return ""


def _valid_firmware(value: object) -> dict | None:
    """A firmware record as the child reports it or the state dir holds it, checked field by field; the child
    talked to the network and the file may be old, so anything odd means: read /info again."""
    if not isinstance(value, dict):
        return None
    software, serial, generation = value.get("software"), value.get("serial", ""), value.get("generation")
    imeter, auth = value.get("imeter"), value.get("inverters_auth")
    if generation not in GENERATIONS or not isinstance(software, str) or not _SOFTWARE.fullmatch(software):
        return None
    if not isinstance(serial, str) or (serial and not _SERIAL.fullmatch(serial)):
        return None
    return {"generation": generation, "software": software, "serial": serial,
            "imeter": imeter if isinstance(imeter, bool) else None,
            "inverters_auth": auth if auth in INVERTER_AUTH else None}


COLLECTOR = EnvoyCollector()
