"""Enphase IQ Gateway (Envoy) on the LAN, inside the sandbox (see fetch_common), any firmware. The reasons are
in dreadpi.collectors.envoy: this source travels on stdin, which is bounded, so its prose is short."""

from __future__ import annotations

import hashlib
import re
import time

try:
    import fetch_common as common  # in the child, sent on stdin by the parent
    from fetch_common import Failure
except ImportError:  # in the parent, which derives the same passwords to keep them out of messages
    from dreadpi.collectors import fetch_common as common
    from dreadpi.collectors.fetch_common import Failure

# Paths are fixed in code; only the host is configurable.
PRODUCTION_JSON = "/production.json?details=1"  # 7+: HTTPS, token
INFO = "/info"  # any firmware, no token
V1_PRODUCTION = "/api/v1/production"  # before 7: wattsNow
V1_INVERTERS = "/api/v1/production/inverters"  # before 7: lastReportDate; some firmware wants digest auth
METER_JSON = "/production.json"  # before 7, metered Envoy-S: consumption
HTTPS_PORT = 443
TOKEN_FIRMWARE = 7  # the first major version that wants the owner token, over HTTPS only
NIGHT_NOISE = 100.0  # W: negative production down to this is meter noise at night, read as 0
REALM = "enphaseenergy.com"
USERS = ("envoy", "installer")
REDIRECTS = (301, 302, 303, 307, 308)
_SOFTWARE = re.compile(r"[A-Za-z]{0,3}(\d{1,3})\.[0-9A-Za-z._-]{0,30}")
_SERIAL = re.compile(r"[0-9]{6,20}")
_PARAM = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{0,200}")  # printable, no quote or backslash


class Misfit(Exception):
    """The answer does not fit the recorded firmware family: read /info again."""


def envoy_password(serial: str) -> str:
    """The `envoy` user's password before firmware 7: the last six digits of the serial number."""
    return serial[-6:]


def installer_password(serial: str, user: str = "installer", realm: str = REALM) -> str:
    """Enphase's public "emupw" rule: MD5 of `[e]USER@REALM#SERIAL EnPhAsE eNeRgY `, its last eight hex digits
    last first, each 0 and 1 replaced by a letter from a countdown of the digest's zeros and ones."""
    digest = hashlib.md5(f"[e]{user}@{realm}#{serial} EnPhAsE eNeRgY ".encode(), usedforsecurity=False).hexdigest()
    zeros, ones = digest.count("0"), digest.count("1")
    password = ""
    for char in reversed(digest[-8:]):
        zeros = min(max(zeros - (zeros in (3, 6, 9)), 0), 20)
        ones = min(max(ones - (ones in (9, 15)), 0), 26)
        if char == "0":
            password += chr(ord("f") + zeros)
            zeros -= 1
        elif char == "1":
            password += chr(ord("@") + ones)
            ones -= 1
        else:
            password += char
    return password


class Share:
    """Part of the deadline for an optional request, so that a slow one cannot cost the reading in hand."""

    def __init__(self, deadline: common.Deadline, fraction: float) -> None:
        self.seconds = max(0.5, deadline.left() * fraction)
        self.end, self.outer = time.monotonic() + self.seconds, deadline

    def left(self) -> float:
        remaining = min(self.end - time.monotonic(), self.outer.left())
        if remaining <= 0:
            raise Failure(f"gave up after {self.seconds:.1f} s", "unreachable")
        return remaining


class Gateway:
    """One gateway: plain HTTP (never with the token) and pinned HTTPS, each session made on first use."""

    def __init__(self, host: str, pinned: str, deadline: common.Deadline, result: dict) -> None:
        self.host, self.pinned, self.deadline, self.result = host, pinned, deadline, result
        self.netloc = f"[{host}]" if ":" in host else host
        self.sessions: dict = {}

    def http(self, path: str, headers: dict | None = None, deadline: object = None) -> common.Answer:
        if "http" not in self.sessions:
            self.sessions["http"] = common.session()
        return common.fetch(self.sessions["http"], "GET", f"http://{self.netloc}{path}", self.host,
                            deadline or self.deadline, headers)

    def https(self, path: str, headers: dict | None = None) -> common.Answer:
        """Pinned HTTPS; with no pin yet, the certificate seen over a silent handshake is pinned and reported."""
        if "https" not in self.sessions:
            if not self.pinned:
                self.pinned = self.result["fingerprint"] = common.fingerprint_of(self.host, HTTPS_PORT, self.deadline)
            self.sessions["https"] = common.session(_pinned_adapter(self.pinned))
        try:
            return common.fetch(self.sessions["https"], "GET", f"https://{self.netloc}{path}", self.host,
                                self.deadline, headers, verify=False)
        except Failure as err:
            if "fingerprint" in str(err):
                seen = common.fingerprint_of(self.host, HTTPS_PORT, self.deadline)
                if seen != self.pinned:
                    self.result["fingerprint_seen"] = seen
                    raise Failure(f"certificate of {self.host} has SHA-256 {seen}, not the pinned "
                                  f"{self.pinned}") from None
            raise


def _pinned_adapter(fingerprint: str) -> object:
    """urllib3 checks the fingerprint during the handshake, before a request (and the token) is written."""
    import requests.adapters

    class Pinned(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: object, **kwargs: object) -> None:
            kwargs["assert_fingerprint"] = fingerprint
            kwargs["assert_hostname"] = False
            super().init_poolmanager(*args, **kwargs)

    return Pinned(max_retries=0)


def _refused(err: Failure) -> bool:
    return str(err).endswith("connection refused")


def detect(gw: Gateway, settings: dict) -> dict:
    """The firmware from /info: plain HTTP first (before 7 there is nothing else; 7+ redirects), then HTTPS."""
    info, redirected, refused = None, False, None
    try:
        answer = gw.http(INFO)
        redirected = answer.status in REDIRECTS or answer.status == 401
        info = parse_info(answer) if answer.status == 200 else None
    except Failure as err:
        if not _refused(err):
            raise  # a host that does not answer HTTP will not answer HTTPS either
        refused = err
    if info is None:
        try:
            answer = gw.https(INFO)
            info = parse_info(answer) if answer.status == 200 else None
        except Failure as err:
            if refused is not None or not _refused(err):
                raise  # nothing listens, a wrong certificate, or a hang: the cause, not a guess
    if info is not None:
        if info["generation"] == "legacy" and (settings.get("pinned") or settings.get("seen_modern")):
            gw.result["downgrade"] = True  # a gateway seen on HTTPS never falls back by itself; an impostor would
            raise Failure(f"{gw.host} now claims firmware {info['software']} (before 7: plain HTTP, no token), but "
                          "it was seen on HTTPS with firmware 7 or later; refusing plain HTTP")
        gw.result["info"] = info
        return dict(info, inverters_auth=None)
    modern = redirected or bool(settings.get("token") or gw.pinned or settings.get("seen_modern"))
    return {"generation": "modern" if modern else "legacy", "software": "", "serial": "", "imeter": None}


def parse_info(answer: common.Answer) -> dict | None:
    """{generation, software, serial, imeter} from /info's XML, or None when the body is not that."""
    import xml.etree.ElementTree as ElementTree

    upper = answer.body.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        return None  # an HTML page, or entity tricks; /info has no DTD, so nothing can expand
    try:
        root = ElementTree.fromstring(answer.body)  # noqa: S314 (no defusedxml in the child; no DTD, bounded)
    except ElementTree.ParseError:
        return None
    device = root.find("device")
    software = (device.findtext("software") or "").strip() if device is not None else ""
    version = _SOFTWARE.fullmatch(software)
    if root.tag != "envoy_info" or version is None:
        return None
    serial = (device.findtext("sn") or "").strip()
    modern = int(version.group(1)) >= TOKEN_FIRMWARE or (root.findtext("web-tokens") or "").strip() == "true"
    return {"generation": "modern" if modern else "legacy", "software": software,
            "serial": serial if _SERIAL.fullmatch(serial) else "",
            "imeter": {"true": True, "false": False}.get((device.findtext("imeter") or "").strip())}


def modern(gw: Gateway, firmware: dict, settings: dict, result: dict) -> None:
    token = settings.get("token") or ""
    if not token:
        which = f"firmware {firmware['software']}" if firmware.get("software") else "this gateway (firmware 7+)"
        raise Failure(f"{which} needs an owner token: get one at https://entrez.enphaseenergy.com and set "
                      "envoy.token", "config")
    try:
        answer = gw.https(PRODUCTION_JSON, {"Authorization": f"Bearer {token}"})
    except Failure as err:
        if _refused(err):
            raise Misfit(str(err)) from None
        raise
    if answer.status in (401, 403):
        raise Failure(f"token refused (HTTP {answer.status}); owner tokens expire after about a year: get a new "
                      "one at https://entrez.enphaseenergy.com and set envoy.token", "auth")
    body = _production_json(answer)
    entry = _production_entry(body["production"])
    raw = common.number(entry.get("wNow"), f"{entry.get('type')} wNow")
    result["watts"] = _clamped(raw)
    result["at"] = common.number(entry.get("readingTime"), f"{entry.get('type')} readingTime")
    result["extra"] = consumption(body.get("consumption"), raw)


def _check(answer: common.Answer) -> None:
    if answer.status == 503:
        raise Failure("the gateway is starting up (HTTP 503); the next cycle tries again", "unreachable")
    if answer.status != 200:
        raise Failure(f"HTTP {answer.status} {answer.first_line(60)!r}", common.status_problem(answer.status))
    if answer.content_type != "application/json":
        raise Failure(f"the gateway answered {answer.content_type or 'without a content type'}, not JSON "
                      "(old firmware, or an error page)")


def _production_json(answer: common.Answer) -> dict:
    _check(answer)
    body = answer.json("the gateway")
    if not isinstance(body, dict) or not isinstance(body.get("production"), list):
        raise Failure("production.json has no production list")
    return body


def _production_entry(entries: list) -> dict:
    """The metered (eim) entry when a production CT is fitted, else the inverters' own report."""
    inverters = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "eim" and entry.get("measurementType", "production") == "production":
            if _active(entry):
                return entry
        elif entry.get("type") == "inverters":
            inverters = entry
    if inverters is None:
        raise Failure("production.json has neither a metered (eim) nor an inverters entry")
    return inverters


def _active(entry: dict) -> bool:
    """A meter's figures mean something only when its CT is fitted."""
    count = entry.get("activeCount")
    return isinstance(count, int) and not isinstance(count, bool) and count > 0


def _clamped(watts: float) -> float:
    if watts < -NIGHT_NOISE:
        raise Failure(f"production is {watts:.0f} W; more negative than night-time noise")
    return max(watts, 0.0)


def consumption(entries: object, production: float) -> dict:
    """House consumption and net flow (< 0: export) where CTs are fitted. Firmware 8.3.5433 and similar put the
    net figure in the total-consumption meter too: when both carry one figure, consumption = net + production."""
    meters: dict = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and _active(entry):
            meters.setdefault(entry.get("measurementType"), entry)
    total, net = meters.get("total-consumption"), meters.get("net-consumption")
    extra: dict = {}
    if net:
        extra["net_watts"] = common.number(net.get("wNow"), "net-consumption wNow")
    if total:
        extra["consumption_watts"] = common.number(total.get("wNow"), "total-consumption wNow")
        lifetimes = total.get("whLifetime"), net.get("whLifetime") if net else None
        if net and total.get("wNow") == net.get("wNow") and (None in lifetimes or lifetimes[0] == lifetimes[1]):
            extra["consumption_watts"] = extra["net_watts"] + production
            extra["consumption_from"] = "net+production"
    return extra


def legacy(gw: Gateway, firmware: dict, settings: dict, result: dict) -> None:
    try:
        answer = gw.http(V1_PRODUCTION)
    except Failure as err:
        if _refused(err):
            raise Misfit(str(err)) from None
        raise
    if answer.status in REDIRECTS or answer.status in (401, 403, 404):
        raise Misfit(f"{V1_PRODUCTION} answered HTTP {answer.status}")
    _check(answer)
    body = answer.json("the gateway")
    fetched = time.time()
    result["watts"] = _clamped(common.number(body.get("wattsNow") if isinstance(body, dict) else None, "wattsNow"))
    # The v1 API gives no reading time. The newest inverter report is when these watts were measured (never
    # later than now: a fast gateway clock must not make old watts look fresh); without the inverter list, the
    # time of the fetch stands in for it.
    newest = inverter_reports(gw, firmware, result)
    result["at"] = min(newest, fetched) if newest else fetched
    result["extra"] = _meter_consumption(gw) if firmware.get("imeter") else {}


def inverter_reports(gw: Gateway, firmware: dict, result: dict) -> float | None:
    """The newest `lastReportDate` in the inverter list, or None; never fails the cycle, which has its watts."""
    serial, known = firmware.get("serial") or "", firmware.get("inverters_auth")
    if known == "unavailable":
        return None
    try:
        answer, user = _inverter_list(gw, serial, known, Share(gw.deadline, 0.5))
        if answer.status in (401, 404):
            result["inverters_auth"] = "unavailable"
            why = ("no inverter list" if answer.status == 404 else "the inverter list refused the passwords "
                   "derived from the serial number" if serial else "no serial number for the inverter list's login")
            result["warnings"].append(f"{why} (HTTP {answer.status}): reading times are fetch times from now on")
            return None
        if answer.status != 200:
            raise Failure(f"HTTP {answer.status}")
        reports = answer.json("the inverter list")
    except Failure as err:
        result["warnings"].append(f"no inverter list this cycle ({err}); the reading time is the fetch time")
        return None
    result["inverters_auth"] = user
    times = [r.get("lastReportDate") for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []
    times = [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1e11]
    return float(max(times)) if times else None


def _inverter_list(gw: Gateway, serial: str, known: object, share: Share) -> tuple:
    """(answer, user): first without credentials (some firmware wants none, and a 401 brings the challenge)."""
    answer, user = gw.http(V1_INVERTERS, deadline=share), "none"
    for user in ((known,) if known in USERS else USERS) if answer.status == 401 and serial else ():
        header = digest(answer.headers.get("www-authenticate", ""), user, _password(user, serial), V1_INVERTERS)
        answer = gw.http(V1_INVERTERS, {"Authorization": header}, deadline=share)
        if answer.status != 401:
            break
    return answer, user


def _password(user: str, serial: str) -> str:
    return envoy_password(serial) if user == "envoy" else installer_password(serial, user)


def _meter_consumption(gw: Gateway) -> dict:
    """Consumption from a metered Envoy-S's production.json; a failure costs this extra only."""
    try:
        body = _production_json(gw.http(METER_JSON, deadline=Share(gw.deadline, 0.5)))
        entry = _production_entry(body["production"])
        return consumption(body.get("consumption"), common.number(entry.get("wNow"), "production wNow"))
    except Failure as err:
        gw.result["warnings"].append(f"no consumption this cycle ({err})")
        return {}


def digest(challenge: str, user: str, password: str, uri: str) -> str:
    """The Authorization header answering a `Digest` challenge (RFC 7616: MD5 or MD5-sess, qop auth or none)."""
    import os

    from requests.utils import parse_dict_header

    params = parse_dict_header(challenge[7:]) if challenge[:7].lower() == "digest " else {}
    realm, nonce, opaque = params.get("realm"), params.get("nonce"), params.get("opaque")
    algorithm = (params.get("algorithm") or "MD5").upper()
    qops = [q.strip() for q in (params.get("qop") or "").split(",") if q.strip()]
    if realm is None or not nonce or algorithm not in ("MD5", "MD5-SESS") or (qops and "auth" not in qops) \
            or not all(_PARAM.fullmatch(v) for v in (realm, nonce, opaque or "")):
        raise Failure("the inverter list asked for a login this collector cannot answer")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    cnonce = os.urandom(8).hex()
    ha1 = md5(f"{user}:{realm}:{password}")
    ha1 = md5(f"{ha1}:{nonce}:{cnonce}") if algorithm == "MD5-SESS" else ha1
    ha2 = md5(f"GET:{uri}")
    response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}" if qops else f"{ha1}:{nonce}:{ha2}")
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"', f"algorithm={algorithm}",
              f'response="{response}"']
    fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"'] if qops else []
    fields += [f'opaque="{opaque}"'] if opaque is not None else []
    return "Digest " + ", ".join(fields)


def work(settings: dict, result: dict) -> None:
    gw = Gateway(settings["host"], settings.get("pinned") or "", common.Deadline(settings["budget"]), result)
    recorded = settings.get("firmware")
    firmware = recorded if isinstance(recorded, dict) else detect(gw, settings)
    try:
        _read(gw, firmware, settings, result)
    except Misfit as misfit:
        if firmware is not recorded:
            raise Failure(str(misfit)) from None
        result["warnings"].append(f"the gateway's answers no longer fit firmware {recorded.get('software')} "
                                  f"({misfit}); reading /info again")
        try:
            _read(gw, detect(gw, settings), settings, result)
        except Misfit as again:
            raise Failure(str(again)) from None


def _read(gw: Gateway, firmware: dict, settings: dict, result: dict) -> None:
    (legacy if firmware.get("generation") == "legacy" else modern)(gw, firmware, settings, result)


def run() -> None:
    common.main(work)
