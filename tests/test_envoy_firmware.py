"""The envoy collector across gateway firmware, end to end: the real `dreadpi run` and sandbox against real
servers on loopback, a plain HTTP one on port 80 for firmware before 7 and an HTTPS one on 443 for 7 and later.

Every payload here is written from the documented formats (Enphase-API's /info, production.json and v1 API
pages; the v1 inverter list as owners have posted it; the 8.3.5433 consumption fault as pyenphase #467 and
#477 describe it), not copied from a captured gateway.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dreadpi.collectors import envoy, fetch_envoy
from tests.apiworld import (
    ApiServer,
    Certificates,
    Digest,
    Reply,
    World,
    hang,
    plain_server,
    status,
)
from tests.conftest import dreadpi, error_log, write_config

TOKEN = "eyJraWQiOiJmdyJ9.eyJlbnBoYXNlVXNlciI6Im93bmVyIn0.ZmlybXdhcmUtdGVzdC1zaWduYXR1cmU"
# The serial of a published test vector for the installer password rule (see test_the_password_rules_...).
SERIAL = "122011110123"
ENVOY_PASSWORD, INSTALLER_PASSWORD = "110123", "d5ceb265"
INFO, V1, INVERTERS, PRODUCTION = "/info", "/api/v1/production", "/api/v1/production/inverters", "/production.json"


# -- payloads, from the documented formats --------------------------------------------------------------------------


def info(software: str, imeter: str | None = None, web_tokens: bool = False, serial: str = SERIAL) -> Reply:
    """/info: <envoy_info><device> with sn, pn, software (and imeter on Envoy-S firmware), then packages."""
    meter = f"    <imeter>{imeter}</imeter>\n" if imeter is not None else ""
    tokens = "  <web-tokens>true</web-tokens>\n" if web_tokens else ""
    body = (f"<?xml version='1.0' encoding='UTF-8'?>\n<envoy_info>\n  <time>{int(time.time())}</time>\n"
            f"  <device>\n    <sn>{serial}</sn>\n    <pn>800-00000-r00</pn>\n    <software>{software}</software>\n"
            f"    <euaid>000000</euaid>\n    <seqnum>0</seqnum>\n    <apiver>1</apiver>\n{meter}  </device>\n{tokens}"
            "  <package name='app'>\n    <pn>500-00002-r01</pn>\n    <version>00.00.00</version>\n"
            "    <build>000000</build>\n  </package>\n</envoy_info>\n")
    return Reply(200, body, content_type="text/xml")


def v1_production(watts: int) -> Reply:
    """/api/v1/production: four integers, no reading time."""
    return Reply(200, {"wattHoursToday": 8120, "wattHoursSevenDays": 61200, "wattHoursLifetime": 14578520,
                       "wattsNow": watts})


def inverter_list(newest: int, count: int = 4) -> list:
    """/api/v1/production/inverters: one object per microinverter; `newest` is the latest lastReportDate."""
    return [{"serialNumber": f"1216{n:08d}", "lastReportDate": newest - 37 * n, "devType": 1,
             "lastReportWatts": 180 + n, "maxReportWatts": 250} for n in range(count)]


def json_reply(value: object) -> Reply:
    return Reply(200, json.dumps(value), content_type="application/json")


def meter(kind: str, watts: float, lifetime: float, active: int = 1) -> dict:
    """One eim entry of production.json."""
    now = int(time.time())
    return {"type": "eim", "activeCount": active, "measurementType": kind, "readingTime": now - 4, "wNow": watts,
            "whLifetime": lifetime, "varhLeadLifetime": 0.2, "varhLagLifetime": 16918.5, "vahLifetime": 2593.6,
            "rmsCurrent": 3.1, "rmsVoltage": 241.8, "reactPwr": -45.0, "apprntPwr": 760.2, "pwrFactor": 0.93,
            "whToday": 0.0, "whLastSevenDays": 0.0, "vahToday": 0.0, "varhLeadToday": 0.0, "varhLagToday": 0.0}


def production_json(production: float, total: float | None = None, net: float | None = None,
                    total_lifetime: float = 9012345.0, net_lifetime: float = 3012345.0) -> dict:
    """production.json of a metered gateway: inverters, the production CT, and consumption CTs if given."""
    now = int(time.time())
    body: dict = {"production": [
        {"type": "inverters", "activeCount": 12, "readingTime": now - 40, "wNow": int(production) - 9,
         "whLifetime": 22444000},
        meter("production", production, 5513493.5),
    ], "storage": [{"type": "acb", "activeCount": 0, "readingTime": 0, "wNow": 0, "whNow": 0, "state": "idle"}]}
    if total is not None:
        body["consumption"] = [meter("total-consumption", total, total_lifetime),
                               meter("net-consumption", net, net_lifetime)]
    return body


# -- helpers ----------------------------------------------------------------------------------------------------------


def gateway_config(world_dir: Path, token: str = "", **envoy_settings: str) -> Path:
    settings = {"host": "envoy.test", "token": token, "cert_sha256": "", **envoy_settings}
    return write_config(world_dir, {"collector": {"source": "envoy", "timeout": "5"}, "envoy": settings})


def state(world_dir: Path) -> dict:
    return json.loads((world_dir / "state" / "state.json").read_text())


def recorded(world_dir: Path) -> dict:
    return json.loads((world_dir / "state" / "envoy-firmware.json").read_text())


def reason(world: World, config: Path) -> str:
    return status(world, config)["reason"].removeprefix("failsafe (drm0): ")


def assert_no_secret(world_dir: Path, *runs: object) -> None:
    """Neither the token nor the serial, nor a password derived from it, anywhere a person or a log could see.
    (The six-digit envoy password is looked for in text only: a float in state.json may hold any six digits.)"""
    text = "".join(run.stdout + run.stderr for run in runs) + error_log(world_dir)
    plot = world_dir / "log" / "plot.log"
    text += plot.read_text() if plot.exists() else ""
    everything = text + (world_dir / "state" / "state.json").read_text() + json.dumps(status_of(world_dir))
    for secret in (TOKEN, SERIAL, INSTALLER_PASSWORD):
        assert secret not in everything
    assert ENVOY_PASSWORD not in text


def status_of(world_dir: Path) -> dict:
    done = dreadpi("status", "--json", "-c", str(world_dir / "dreadpi.cfg"))
    return json.loads(done.stdout)


def never_sent_the_token_in_clear(server: ApiServer) -> bool:
    return all(TOKEN not in json.dumps(r.headers) for r in server.requests)


# -- the password rules -------------------------------------------------------------------------------------------


def test_the_password_rules_match_published_vectors() -> None:
    """Test vectors published with an independent implementation of Enphase's installer-password rule."""
    assert fetch_envoy.installer_password("122011110123") == "d5ceb265"
    assert fetch_envoy.installer_password("122011110123", "someone") == "d2eg979a"
    assert fetch_envoy.installer_password("122011110123", "someone", "hems") == "b83f97Ac"
    assert fetch_envoy.envoy_password("121426016034") == "016034"
    assert envoy.derived_passwords(SERIAL) == [ENVOY_PASSWORD, INSTALLER_PASSWORD]


def test_the_program_and_a_long_token_fit_the_sandboxs_stdin() -> None:
    """The child's program travels on stdin with its settings, and stdin is bounded: owner tokens are about
    500-900 characters, so a 1000-character one must fit beside the longest firmware record."""
    from dreadpi import sandbox
    from dreadpi.collectors import api

    firmware = {"generation": "legacy", "software": "D5.0.62", "serial": SERIAL, "imeter": True,
                "inverters_auth": "installer"}
    settings = {"host": "envoy-gateway.example.lan", "token": "x" * 1000, "pinned": "a" * 64, "firmware": firmware,
                "seen_modern": False}
    assert len(api.invocation("envoy", settings, 30).stdin) <= sandbox.MAX_STDIN


def test_the_fake_gateways_digest_login_is_the_standard_one(root: None) -> None:
    """The test gateway's digest check lets a standard client (the stdlib's) in with the right password only,
    so the collector passing it means the collector speaks standard digest."""
    guard = Digest({"envoy": ENVOY_PASSWORD}, lambda r: json_reply(inverter_list(1700000000)))
    url = "http://127.77.0.3/api/v1/production/inverters"

    def get(password: str) -> int:
        handler = urllib.request.HTTPDigestAuthHandler()
        handler.add_password(Digest.realm, url, "envoy", password)
        try:
            return urllib.request.build_opener(handler).open(url, timeout=5).status
        except urllib.error.HTTPError as err:
            return err.code

    with plain_server("envoy.test", {INVERTERS: guard}):
        assert get("wrong1") == 401
        assert get(ENVOY_PASSWORD) == 200
    assert guard.accepted == ["envoy"]


# -- firmware before 7: plain HTTP, no token ---------------------------------------------------------------------


LEGACY = [
    # Envoy-R: no <imeter>; the inverter list wants user envoy (the serial's last six digits).
    ("R3.18.4", None, {"envoy": ENVOY_PASSWORD}, "envoy", None),
    # Envoy-R on the later D-numbered firmware, same API.
    ("D3.18.10", None, {"envoy": ENVOY_PASSWORD}, "envoy", None),
    # Envoy-S without CTs: not metered; this firmware's inverter list is open.
    ("D5.0.62", "false", None, "none", None),
    # Envoy-S metered with CTs: installer login (derived password); consumption from production.json.
    ("D5.0.49", "true", {"installer": INSTALLER_PASSWORD}, "installer", (1500.0, 900.0)),
]


@pytest.mark.parametrize(("software", "imeter", "users", "login", "consumption"), LEGACY)
def test_old_firmware_reads_plain_http_without_a_token(world: World, world_dir: Path, software: str,
                                                       imeter: str | None, users: dict | None, login: str,
                                                       consumption: tuple | None) -> None:
    newest = int(time.time()) - 95
    reports = Digest(users, lambda r: json_reply(inverter_list(newest))) if users else \
        (lambda r: json_reply(inverter_list(newest)))
    routes = {INFO: lambda r: info(software, imeter), V1: lambda r: v1_production(1234), INVERTERS: reports,
              PRODUCTION: lambda r: json_reply(production_json(600.0, 1500.0, 900.0))}
    config = gateway_config(world_dir)
    with plain_server("envoy.test", routes) as gateway:
        first = world.dreadpi("run", "-c", str(config))
        second = world.dreadpi("run", "-c", str(config))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    now = state(world_dir)
    assert now["watts"] == 1234 and now["mode"] == "drm0"
    assert now["reading_at"] == newest  # the newest inverter report: when those watts were measured
    expected = {} if consumption is None else {"consumption_watts": consumption[0], "net_watts": consumption[1]}
    assert now["extra"] == expected
    assert len(gateway.calls(PRODUCTION)) == (2 if consumption else 0)  # consumption only where metered
    assert recorded(world_dir) | {"recorded_at": 0} == {
        "host": "envoy.test", "generation": "legacy", "software": software, "serial": SERIAL,
        "imeter": {"true": True, "false": False}.get(imeter), "inverters_auth": login, "recorded_at": 0}
    assert len(gateway.calls(INFO)) == 1  # recorded: the second cycle asks no /info
    if users:
        assert reports.accepted == [login, login]
    assert f"envoy.test runs firmware {software} (before 7: plain HTTP, no token)" in error_log(world_dir)
    assert not (world_dir / "state" / "envoy-cert.json").exists()  # no HTTPS: nothing to pin
    assert_no_secret(world_dir, first, second)


def test_an_inverter_list_that_refuses_both_logins_leaves_the_fetch_time(world: World, world_dir: Path) -> None:
    guard = Digest({"installer": "changed-by-the-owner"}, lambda r: json_reply(inverter_list(1)))
    routes = {INFO: lambda r: info("R3.18.4"), V1: lambda r: v1_production(555), INVERTERS: guard}
    config = gateway_config(world_dir)
    with plain_server("envoy.test", routes) as gateway:
        before = time.time()
        first = world.dreadpi("run", "-c", str(config))
        second = world.dreadpi("run", "-c", str(config))
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert before <= state(world_dir)["reading_at"] <= time.time() and state(world_dir)["watts"] == 555
    assert len(gateway.calls(INVERTERS)) == 3  # none, envoy, installer; then not again
    assert guard.accepted == [] and recorded(world_dir)["inverters_auth"] == "unavailable"
    assert ("the inverter list refused the passwords derived from the serial number (HTTP 401): reading times are "
            "fetch times from now on") in error_log(world_dir)
    assert_no_secret(world_dir, first, second)


@pytest.mark.parametrize(("reply", "expected"), [
    (Reply(200, "<html><body>Envoy</body></html>", content_type="text/html"),
     "envoy: the gateway answered text/html, not JSON"),
    (Reply(503, "Service Unavailable"), "envoy: the gateway is starting up (HTTP 503)"),
    (Reply(401, "", content_type="text/html"), "envoy: /api/v1/production answered HTTP 401"),
    (hang(), "envoy: no answer from envoy.test within"),
    # A gateway echoing a derived password: the parent redacts what it knows the child must never say.
    (Reply(500, f"no access for installer:{INSTALLER_PASSWORD}"), "envoy: HTTP 500 'no access for installer:***'"),
])
def test_old_firmware_failures_are_clean(world: World, world_dir: Path, reply: Reply, expected: str) -> None:
    config = gateway_config(world_dir)
    with plain_server("envoy.test", {INFO: lambda r: info("D5.0.62", "false"), V1: lambda r: reply}):
        run = world.dreadpi("run", "-c", str(config), timeout=30)
    assert run.returncode == 4
    assert status(world, config)["mode"] == "drm0"
    assert reason(world, config).startswith(expected), reason(world, config)


def test_no_gateway_and_no_token(world: World, world_dir: Path) -> None:
    config = gateway_config(world_dir)
    assert world.dreadpi("run", "-c", str(config)).returncode == 4
    assert reason(world, config) == "envoy: cannot connect to envoy.test: connection refused"


# -- firmware 7 and later: HTTPS with the token ---------------------------------------------------------------------


def _modern_routes(software: str, body: dict) -> dict:
    def production(request) -> Reply:  # noqa: ANN001
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, "", content_type="text/html")
        return json_reply(body)

    return {INFO: lambda r: info(software, "true", web_tokens=True), PRODUCTION: production}


def _redirecting() -> dict:
    """Port 80 of a gateway with firmware 7+: everything redirects to HTTPS."""
    moved = Reply(301, "", headers={"Location": "https://envoy.test/"})
    return {path: (lambda r: moved) for path in (INFO, V1, INVERTERS, PRODUCTION)}


def test_d8_is_detected_over_https_and_reads_with_the_token(world: World, world_dir: Path,
                                                            certs: Certificates) -> None:
    cert = certs.self_signed("one")
    config = gateway_config(world_dir, TOKEN)
    body = production_json(2310.0, 1800.5, -509.5)
    with plain_server("envoy.test", _redirecting()) as port80, \
            ApiServer("envoy.test", *cert, _modern_routes("D8.2.4345", body)) as gateway:
        first = world.dreadpi("run", "-c", str(config))
        second = world.dreadpi("run", "-c", str(config))
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert state(world_dir)["watts"] == 2310 and state(world_dir)["extra"] == {"consumption_watts": 1800.5,
                                                                               "net_watts": -509.5}
    assert recorded(world_dir)["generation"] == "modern" and recorded(world_dir)["software"] == "D8.2.4345"
    assert len(gateway.calls(INFO)) == 1 and len(port80.calls(INFO)) == 1  # detected once, then recorded
    assert port80.calls(V1) == [] and never_sent_the_token_in_clear(port80)
    assert "envoy.test runs firmware D8.2.4345 (7 or later: HTTPS with the owner token)" in error_log(world_dir)
    assert_no_secret(world_dir, first, second)


def test_firmware_8_3_5433_consumption_is_net_plus_production(world: World, world_dir: Path,
                                                              certs: Certificates) -> None:
    """The gateway of the issue: the total-consumption meter repeats the net figure (428 W, lifetime too), while
    the house uses 428 W from the grid plus the 358 W the roof makes."""
    cert = certs.self_signed("one")
    body = production_json(358.0, 428.0, 428.0, total_lifetime=3077020.5, net_lifetime=3077020.5)
    config = gateway_config(world_dir, TOKEN)
    with ApiServer("envoy.test", *cert, _modern_routes("D8.3.5433", body)):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    now = state(world_dir)
    assert now["extra"] == {"consumption_watts": 786.0, "net_watts": 428.0, "consumption_from": "net+production"}
    assert status(world, config)["extra"]["consumption_watts"] == 786.0
    assert (world_dir / "log" / "plot.log").read_text().strip().endswith(",358,drm2,50,786,428")
    assert_no_secret(world_dir, run)


def test_a_healthy_meter_that_agrees_only_at_night_is_left_alone(world: World, world_dir: Path,
                                                                  certs: Certificates) -> None:
    """At night total and net power agree on a healthy gateway too; the lifetimes tell the two apart, and the
    derivation would give the same figure anyway."""
    cert = certs.self_signed("one")
    body = production_json(0.0, 310.0, 310.0)  # lifetimes differ: a healthy meter
    config = gateway_config(world_dir, TOKEN)
    with ApiServer("envoy.test", *cert, _modern_routes("D8.2.4345", body)):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert state(world_dir)["extra"] == {"consumption_watts": 310.0, "net_watts": 310.0}


def test_firmware_7_without_a_token_says_what_to_do(world: World, world_dir: Path, certs: Certificates) -> None:
    cert = certs.self_signed("one")
    config = gateway_config(world_dir)
    with ApiServer("envoy.test", *cert, _modern_routes("D7.6.175", production_json(100.0))) as gateway:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    assert reason(world, config) == ("envoy: firmware D7.6.175 needs an owner token: get one at "
                                     "https://entrez.enphaseenergy.com and set envoy.token")
    assert gateway.calls(PRODUCTION) == []


def test_the_token_is_optional_in_the_config(world_dir: Path) -> None:
    config = gateway_config(world_dir)
    done = dreadpi("check-config", str(config))
    assert done.returncode == 0, done.stderr
    assert "note: envoy.token is empty: that works only with gateway firmware before 7" in done.stdout
    settings = {"host": "envoy.test", "token": "", "cert_sha256": ""}
    assert envoy.COLLECTOR.advice(settings) == [
        "envoy.token is empty: that works only with gateway firmware before 7 (Envoy-R, early Envoy-S), which "
        "answers plain HTTP without a token; firmware 7 and later needs an owner token from "
        "https://entrez.enphaseenergy.com"]
    assert envoy.COLLECTOR.advice(dict(settings, token=TOKEN)) == []


# -- firmware changes -----------------------------------------------------------------------------------------------


def test_an_upgrade_to_firmware_8_is_noticed_and_followed(world: World, world_dir: Path,
                                                          certs: Certificates) -> None:
    cert = certs.self_signed("one")
    config = gateway_config(world_dir, TOKEN)
    old = {INFO: lambda r: info("D5.0.62", "false"), V1: lambda r: v1_production(700),
           INVERTERS: lambda r: json_reply(inverter_list(int(time.time()) - 60))}
    with plain_server("envoy.test", old) as before:
        first = world.dreadpi("run", "-c", str(config))
    assert first.returncode == 0, first.stderr
    assert recorded(world_dir)["generation"] == "legacy" and never_sent_the_token_in_clear(before)
    assert "envoy.token is set, but firmware D5.0.62 needs none; it is never sent over plain HTTP" in \
        error_log(world_dir)
    with plain_server("envoy.test", _redirecting()), \
            ApiServer("envoy.test", *cert, _modern_routes("D8.2.4345", production_json(1900.0))):
        second = world.dreadpi("run", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert state(world_dir)["watts"] == 1900
    assert recorded(world_dir)["generation"] == "modern" and recorded(world_dir)["software"] == "D8.2.4345"
    log = error_log(world_dir)
    assert "the gateway's answers no longer fit firmware D5.0.62 (/api/v1/production answered HTTP 301)" in log
    assert "envoy.test now runs firmware D8.2.4345 (7 or later: HTTPS with the owner token), no longer D5.0.62" \
        in log
    assert json.loads((world_dir / "state" / "envoy-cert.json").read_text())["sha256"] == \
        certs.fingerprint(cert[0])
    assert_no_secret(world_dir, first, second)


def test_a_gateway_seen_on_https_that_claims_old_firmware_is_refused(world: World, world_dir: Path,
                                                                      certs: Certificates) -> None:
    """After firmware 7+ over pinned HTTPS, plain HTTP that claims firmware 5 is what an impostor would serve."""
    cert = certs.self_signed("one")
    config = gateway_config(world_dir, TOKEN)
    with plain_server("envoy.test", _redirecting()), \
            ApiServer("envoy.test", *cert, _modern_routes("D7.6.175", production_json(1500.0))):
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
    impostor = {INFO: lambda r: info("D5.0.62", "false"), V1: lambda r: v1_production(50)}
    with plain_server("envoy.test", impostor) as fake:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    text = reason(world, config)
    assert text.startswith("envoy: envoy.test now claims firmware D5.0.62 (before 7: plain HTTP, no token), but it "
                           "was seen on HTTPS with firmware 7 or later; refusing plain HTTP"), text
    assert text.endswith(f"delete {world_dir}/state/envoy-cert.json and {world_dir}/state/envoy-firmware.json")
    assert fake.calls(V1) == [] and never_sent_the_token_in_clear(fake)
    assert recorded(world_dir)["generation"] == "modern"
