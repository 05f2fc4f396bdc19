"""The API collectors end to end: the real `dreadpi run`, the real sandbox (the child as nobody, Debian's python3
and python3-requests), against real HTTPS servers on loopback serving the documented payloads and errors."""

from __future__ import annotations

import datetime
import json
import os
import signal
import stat
import subprocess
import time
import zoneinfo
from pathlib import Path

import pytest

from dreadpi.collectors import api
from tests.apiworld import ApiServer, Certificates, Reply, World, hang, status, wait_for
from tests.conftest import write_config

PV_KEY = "0123456789abcdef0123456789abcdef01234567"
EN_KEY, EN_CLIENT, EN_SECRET = "a" * 32, "c1" * 16, "s3cr3t" * 6
ENVOY_TOKEN = "eyJraWQiOiJ0ZXN0In0.eyJzdWIiOiJvd25lciJ9.c2lnbmF0dXJlLXNlY3JldA"
STATUS = "/service/r2/getstatus.jsp"
TOKEN = "/oauth/token"
SUMMARY = "/api/v4/systems/4242/summary"
PRODUCTION = "/production.json"


def _log(world_dir: Path, name: str = "error.log") -> str:
    path = world_dir / "log" / name
    return path.read_text() if path.exists() else ""


def _everything_visible(world_dir: Path, *runs: object) -> str:
    """All a person or a log collector could see: command output, logs and status."""
    text = "".join(getattr(run, "stdout", "") + getattr(run, "stderr", "") for run in runs)
    state = world_dir / "state" / "state.json"
    return text + _log(world_dir) + _log(world_dir, "plot.log") + (state.read_text() if state.exists() else "")


def reason_of(world: World, config: Path) -> str:
    """The status reason without the `failsafe (drm0): ` the policy puts before a collector's failure."""
    return status(world, config)["reason"].removeprefix("failsafe (drm0): ")


# -- PVOutput ------------------------------------------------------------------------------------------------------


def _pv_config(world_dir: Path, **pvoutput: str) -> Path:
    settings = {"api_key": PV_KEY, "system_id": "1234", "timezone": "Australia/Sydney", **pvoutput}
    return write_config(world_dir, {"collector": {"source": "pvoutput", "timeout": "6"}, "pvoutput": settings})


def _status_line(zone: str, minutes_ago: int, watts: str) -> tuple:
    local = datetime.datetime.now(zoneinfo.ZoneInfo(zone)).replace(second=0, microsecond=0)
    local -= datetime.timedelta(minutes=minutes_ago)
    line = f"{local:%Y%m%d},{local:%H:%M},12345,{watts},NaN,321,0.404,NaN,240.1"
    return line, local.timestamp()


@pytest.mark.parametrize("zone", ["Australia/Sydney", "America/Denver"])
def test_pvoutput_reads_power_and_time_in_the_systems_zone(world: World, world_dir: Path, certs: Certificates,
                                                           zone: str) -> None:
    line, expected_at = _status_line(zone, 2, "2450")
    routes = {STATUS: lambda r: Reply(200, line, headers={"X-Rate-Limit-Remaining": "55",
                                                          "X-Rate-Limit-Limit": "60"})}
    config = _pv_config(world_dir, timezone=zone)
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), routes) as server:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    sent = server.calls(STATUS)[0].headers
    assert sent["x-pvoutput-apikey"] == PV_KEY and sent["x-pvoutput-systemid"] == "1234"
    assert sent["x-rate-limit"] == "1"
    state = json.loads((world_dir / "state" / "state.json").read_text())
    assert state["mode"] == "drm0" and state["watts"] == 2450
    assert state["reading_at"] == expected_at  # read as local time of the system, not UTC and not the Pi's
    assert state["extra"] == {"consumption_watts": 321.0}
    assert PV_KEY not in _everything_visible(world_dir, run)


PV_ERRORS = [  # status, body, reason, problem class (status --json health.problem)
    (401, "Unauthorized 401: Invalid API Key", "pvoutput: 401 Invalid API Key; check pvoutput.api_key", "auth"),
    (401, "Unauthorized 401: Invalid System ID", "pvoutput: 401 Invalid System ID", "auth"),
    (400, "Bad request 400: No status found", "pvoutput: 400 No status found; the system has not uploaded",
     "bad-answer"),
    (403, "Forbidden 403: Read only key", "pvoutput: 403 Read only key", "auth"),
    (403, "Forbidden 403: Exceeded 60 requests per hour", "pvoutput: 403 Exceeded 60 requests per hour; the limit "
                                                          "resets at", "quota"),
    (200, "<html><body>Maintenance</body></html>", "pvoutput: answered HTTP 200 with text/html", "bad-answer"),
    (503, "Service Unavailable 503: try later", "pvoutput: 503 try later", "unreachable"),
]


@pytest.mark.parametrize(("code", "body", "reason", "problem"), PV_ERRORS)
def test_pvoutput_error_bodies_end_in_the_failsafe_with_the_cause(world: World, world_dir: Path,
                                                                  certs: Certificates, code: int, body: str,
                                                                  reason: str, problem: str) -> None:
    kind = "text/html" if body.startswith("<") else "text/plain"
    headers = {"X-Rate-Limit-Reset": str(int(time.time()) + 1800)}
    routes = {STATUS: lambda r: Reply(code, body, content_type=kind, headers=headers)}
    config = _pv_config(world_dir)
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), routes):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4, run.stderr
    info = status(world, config)
    assert info["mode"] == "drm0" and info["failsafe"]
    assert reason_of(world, config).startswith(reason), info["reason"]
    assert reason in _log(world_dir)
    assert info["health"]["problem"] == problem
    assert info["health"]["consecutive_failsafe"] == 1 and info["health"]["failing_since"]


def test_pvoutput_nan_power_is_missing_not_zero(world: World, world_dir: Path, certs: Certificates) -> None:
    line, _ = _status_line("Australia/Sydney", 1, "NaN")
    config = _pv_config(world_dir)
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), {STATUS: lambda r: Reply(200, line)}):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    assert "no power generation value (NaN)" in reason_of(world, config)


def test_pvoutput_low_rate_limit_is_a_warning(world: World, world_dir: Path, certs: Certificates) -> None:
    line, _ = _status_line("Australia/Sydney", 1, "500")
    routes = {STATUS: lambda r: Reply(200, line, headers={"X-Rate-Limit-Remaining": "3", "X-Rate-Limit-Limit": "60"})}
    config = _pv_config(world_dir)
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), routes):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert "warning: pvoutput: only 3 of 60 PVOutput requests left this hour" in _log(world_dir)
    assert status(world, config)["mode"] == "drm3"


@pytest.mark.parametrize("reply", [hang(), Reply(200, "20261124,12:00,1,500,NaN" * 40, drip=0.2)],
                         ids=["hung", "slow-drip"])
def test_pvoutput_hung_or_slow_server_ends_in_the_failsafe_in_time_and_no_secret_in_ps(
        world: World, world_dir: Path, certs: Certificates, reply: Reply) -> None:
    config = _pv_config(world_dir)
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), {STATUS: lambda r: reply}) as server:
        started = time.monotonic()
        proc = world.start("run", "-c", str(config))
        assert wait_for(lambda: server.requests, timeout=15)
        # While the collector waits on the network, no process shows the key in its arguments.
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                assert PV_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                pass
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 4, err
    assert took < 6 + 5  # the timeout, plus interpreter start-up
    reason = reason_of(world, config)
    assert reason.startswith(("pvoutput: gave up after", "pvoutput: no answer from pvoutput.org within")), reason


# -- Enphase Enlighten v4 ------------------------------------------------------------------------------------------


class Enlighten:
    """The cloud's OAuth and summary endpoints, with refresh tokens that work exactly once."""

    def __init__(self, refresh: str = "R0-initial", expires_in: int = 86400) -> None:
        self.valid_refresh = {refresh}
        self.valid_access: set = set()
        self.codes = {"authcode42"}
        self.issued = 0
        self.expires_in = expires_in
        self.summary = {"system_id": 4242, "current_power": 560, "last_report_at": int(time.time()) - 300,
                        "status": "normal", "energy_today": 1234, "size_w": 6600}
        self.summary_reply: Reply | None = None

    def token(self, request) -> Reply:  # noqa: ANN001
        import base64

        if request.method != "POST" or request.headers.get("authorization") != "Basic " + base64.b64encode(
                f"{EN_CLIENT}:{EN_SECRET}".encode()).decode():
            return Reply(401, {"error": "invalid_client", "error_description": "Bad client credentials"})
        grant = request.query.get("grant_type")
        if grant == "refresh_token" and request.query.get("refresh_token") in self.valid_refresh:
            self.valid_refresh.discard(request.query["refresh_token"])  # works once
        elif (grant == "authorization_code" and request.query.get("code") in self.codes
              and request.query.get("redirect_uri") == "https://api.enphaseenergy.com/oauth/redirect_uri"):
            self.codes.discard(request.query["code"])
        else:
            return Reply(401, {"error": "invalid_grant", "error_description": "Invalid refresh token"})
        self.issued += 1
        access, refresh = f"A{self.issued}x", f"R{self.issued}x"
        self.valid_access.add(access)
        self.valid_refresh.add(refresh)
        return Reply(200, {"access_token": access, "token_type": "bearer", "refresh_token": refresh,
                           "expires_in": self.expires_in, "scope": "read write", "enl_uid": "1"})

    def summary_route(self, request) -> Reply:  # noqa: ANN001
        if request.query.get("key") != EN_KEY:
            return Reply(401, {"message": "Not Authorized", "details": "Invalid API key", "code": 401})
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.valid_access:
            return Reply(401, {"message": "Not Authorized", "details": "User is not authorized", "code": 401})
        return self.summary_reply or Reply(200, self.summary)

    def routes(self) -> dict:
        return {TOKEN: self.token, SUMMARY: self.summary_route}


def enlighten(certs: Certificates, cloud: Enlighten) -> ApiServer:
    """The fake Enlighten cloud, served on the name the collector's fixed URLs use."""
    return ApiServer("api.enphaseenergy.com", *certs.pair("api.enphaseenergy.com"), cloud.routes())


def _en_config(world_dir: Path, **enphase: str) -> Path:
    settings = {"api_key": EN_KEY, "client_id": EN_CLIENT, "client_secret": EN_SECRET, "system_id": "4242",
                "refresh_token": "R0-initial", "min_interval": "600", **enphase}
    return write_config(world_dir, {"collector": {"source": "enphase", "timeout": "6"}, "enphase": settings,
                                    "policy": {"max_age": "3600", "min_dwell": "0"}})


def _tokens(world_dir: Path) -> dict:
    return json.loads((world_dir / "state" / "enphase-tokens.json").read_text())


def _open_the_budget(world_dir: Path) -> None:
    """Move the last call back past min_interval, as time passing would."""
    path = world_dir / "state" / "enphase-budget.json"
    budget = json.loads(path.read_text())
    budget["last_call"] -= 601
    path.write_text(json.dumps(budget))


def test_enphase_rotates_tokens_and_stores_them_0600(world: World, world_dir: Path, certs: Certificates) -> None:
    cloud = Enlighten()
    config = _en_config(world_dir)
    with enlighten(certs, cloud) as server:
        first = world.dreadpi("run", "-c", str(config))
        assert first.returncode == 0, first.stderr
        info = status(world, config)
        assert info["watts"] == 560 and info["mode"] == "drm3"
        tokens = _tokens(world_dir)
        assert tokens["refresh_token"] == "R1x" and tokens["access_token"] == "A1x"
        mode = os.stat(world_dir / "state" / "enphase-tokens.json").st_mode
        assert stat.S_IMODE(mode) == 0o600
        # The access token lasts a day: the next call uses it without a refresh.
        _open_the_budget(world_dir)
        second = world.dreadpi("run", "-c", str(config))
        assert second.returncode == 0, second.stderr
        assert len(server.calls(TOKEN)) == 1 and len(server.calls(SUMMARY)) == 2
        # When it expires, the stored (rotated) refresh token is used, never the dead one from the config.
        stored = _tokens(world_dir)
        stored["access_expires_at"] = time.time() - 1
        (world_dir / "state" / "enphase-tokens.json").write_text(json.dumps(stored))
        _open_the_budget(world_dir)
        third = world.dreadpi("run", "-c", str(config))
        assert third.returncode == 0, third.stderr
        assert server.calls(TOKEN)[-1].query["refresh_token"] == "R1x"
        assert _tokens(world_dir)["refresh_token"] == "R2x"
    visible = _everything_visible(world_dir, first, second, third)
    for secret in (EN_KEY, EN_SECRET, "R1x", "A1x", "R2x"):
        assert secret not in visible


def test_enphase_keeps_to_the_interval_by_reusing_the_last_reading(world: World, world_dir: Path,
                                                                  certs: Certificates) -> None:
    cloud = Enlighten()
    config = _en_config(world_dir)
    with enlighten(certs, cloud) as server:
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
        cloud.summary["current_power"] = 100
        again = world.dreadpi("run", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert len(server.calls(SUMMARY)) == 1  # no second call inside min_interval
    assert status(world, config)["watts"] == 560


def test_enphase_check_config_wants_max_age_to_cover_the_interval(world_dir: Path) -> None:
    from tests.conftest import dreadpi

    config = _en_config(world_dir, min_interval="")
    text = config.read_text().replace("max_age = 3600", "max_age = 1000")
    config.write_text(text)
    done = dreadpi("check-config", str(config))
    assert done.returncode == 2
    assert "policy.max_age: 1000 s is shorter than the 2679 s between Enphase API calls" in done.stderr


def test_enphase_quota_backs_off_until_period_end(world: World, world_dir: Path, certs: Certificates) -> None:
    cloud = Enlighten()
    end = int(time.time()) + 7200
    cloud.summary_reply = Reply(429, {"message": "Too Many Requests", "details": "Usage limit exceeded for plan "
                                      "Watt", "code": 429, "period": "month", "period_end": end, "limit": 1000})
    config = _en_config(world_dir)
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(end))
    with enlighten(certs, cloud) as server:
        run = world.dreadpi("run", "-c", str(config))
        assert run.returncode == 4
        assert reason_of(world, config) == f"enphase: quota exhausted until {until}"
        _open_the_budget(world_dir)  # min_interval has passed, but period_end has not
        again = world.dreadpi("run", "-c", str(config))
    assert again.returncode == 4
    assert len(server.calls(SUMMARY)) == 1
    assert reason_of(world, config).startswith(f"enphase: quota exhausted until {until}")


def test_enphase_refused_refresh_token_says_how_to_reauthorise(world: World, world_dir: Path,
                                                               certs: Certificates) -> None:
    cloud = Enlighten(refresh="something-else")
    config = _en_config(world_dir)
    with enlighten(certs, cloud):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    reason = reason_of(world, config)
    assert reason.startswith("enphase: the refresh token was refused (HTTP 401 invalid_grant)")
    assert reason.endswith("re-authorise with: dreadpi enphase-auth")


def test_enphase_revoked_access_token_gets_one_refresh_and_one_retry(world: World, world_dir: Path,
                                                                     certs: Certificates) -> None:
    cloud = Enlighten()
    config = _en_config(world_dir)
    with enlighten(certs, cloud) as server:
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
        cloud.valid_access.clear()  # revoked before it expired
        _open_the_budget(world_dir)
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert len(server.calls(TOKEN)) == 2 and len(server.calls(SUMMARY)) == 3


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(503, {"message": "Service Unavailable", "details": "Data temporarily unavailable", "code": 503}),
     "enphase: 503 Data temporarily unavailable"),
    (Reply(200, "<html>maintenance</html>", content_type="text/html"),
     "enphase: the summary answered HTTP 200 with text/html, not JSON"),
    (Reply(200, {"current_power": "lots", "last_report_at": 1}), "enphase: current_power is not a number"),
])
def test_enphase_bad_answers_end_in_the_failsafe(world: World, world_dir: Path, certs: Certificates, reply: Reply,
                                                 reason: str) -> None:
    cloud = Enlighten()
    cloud.summary_reply = reply
    config = _en_config(world_dir)
    with enlighten(certs, cloud):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    assert reason_of(world, config).startswith(reason)
    assert _tokens(world_dir)["refresh_token"] == "R1x"  # rotated before the failure: kept


def test_enphase_status_not_normal_is_a_warning(world: World, world_dir: Path, certs: Certificates) -> None:
    cloud = Enlighten()
    cloud.summary["status"] = "comm"
    config = _en_config(world_dir)
    with enlighten(certs, cloud):
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
    assert "warning: enphase: Enlighten reports system status 'comm' (not normal)" in _log(world_dir)


def test_enphase_unwritable_token_store_fails_safe_and_says_so(world: World, world_dir: Path,
                                                               certs: Certificates) -> None:
    cloud = Enlighten(expires_in=0)  # every run refreshes
    config = _en_config(world_dir)
    path = world_dir / "state" / "enphase-tokens.json"
    with enlighten(certs, cloud):
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
        _open_the_budget(world_dir)
        subprocess.run(["chattr", "+i", str(path)], check=True)  # readable, but cannot be replaced
        try:
            run = world.dreadpi("run", "-c", str(config))
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    assert run.returncode == 4
    info = status(world, config)
    assert info["mode"] == "drm0"
    assert "enphase: the refreshed tokens could not be stored" in info["reason"]
    assert "re-authorise with: dreadpi enphase-auth" in info["reason"]
    assert json.loads(path.read_text())["refresh_token"] == "R1x"  # the old file, whole


def test_enphase_interrupted_cycles_never_leave_a_broken_token_file(world: World, world_dir: Path,
                                                                    certs: Certificates) -> None:
    """SIGKILL the cycle at random moments while every run rotates the tokens: the token file is always whole,
    and always holds a refresh token the server issued."""
    import random

    cloud = Enlighten(expires_in=0)  # every run refreshes
    config = _en_config(world_dir)
    path = world_dir / "state" / "enphase-tokens.json"
    rng = random.Random(7)
    with enlighten(certs, cloud):
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
        for _ in range(12):
            (world_dir / "state" / "enphase-budget.json").unlink(missing_ok=True)
            proc = world.start("run", "-c", str(config))
            time.sleep(rng.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            subprocess_children_gone = wait_for(lambda: not _collector_running(), timeout=10)
            assert subprocess_children_gone
            stored = json.loads(path.read_text())  # whole, never half-written
            issued = {f"R{n}x" for n in range(1, cloud.issued + 1)}
            assert stored["refresh_token"] in issued
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _collector_running() -> bool:
    """A sandboxed collector child outlives a SIGKILLed cycle (it has its own session) until its own deadline;
    it shows as the interpreter running the bootstrap that loads the fetch modules."""
    boot = api._BOOT.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if boot in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def test_enphase_auth_exchanges_the_pasted_code(world: World, world_dir: Path, certs: Certificates) -> None:
    cloud = Enlighten()
    config = _en_config(world_dir, refresh_token="")
    with enlighten(certs, cloud) as server:
        before = world.dreadpi("run", "-c", str(config))
        assert before.returncode == 4
        assert "not authorised" in reason_of(world, config)
        assert "dreadpi enphase-auth" in reason_of(world, config)
        (world_dir / "state" / "enphase-budget.json").unlink(missing_ok=True)
        auth = world.dreadpi("enphase-auth", "-c", str(config), stdin="authcode42\n")
        assert auth.returncode == 0, auth.stderr
        assert f"oauth/authorize?response_type=code&client_id={EN_CLIENT}&redirect_uri=" in auth.stdout
        assert _tokens(world_dir)["refresh_token"] == "R1x"
        run = world.dreadpi("run", "-c", str(config))
        assert run.returncode == 0, run.stderr
        wrong = world.dreadpi("enphase-auth", "-c", str(config), stdin="authcode42\n")  # a code works once
    assert wrong.returncode != 0
    assert "authorisation code was refused" in wrong.stderr
    assert len(server.calls(TOKEN)) == 2
    assert "authcode42" not in _everything_visible(world_dir, auth, run, wrong)


# -- Envoy (IQ Gateway, local) -------------------------------------------------------------------------------------


def production(eim_active: int = 1, eim_watts: float = 2310.4, inverter_watts: int = 2250,
               consumption: bool = True) -> dict:
    now = int(time.time())
    body = {"production": [
        {"type": "inverters", "activeCount": 16, "readingTime": now - 60, "wNow": inverter_watts, "whLifetime": 1},
        {"type": "eim", "activeCount": eim_active, "measurementType": "production", "readingTime": now - 5,
         "wNow": eim_watts, "whLifetime": 2},
    ], "storage": [{"type": "acb", "activeCount": 0, "readingTime": 0, "wNow": 0}]}
    if consumption:
        body["consumption"] = [
            {"type": "eim", "activeCount": 1, "measurementType": "total-consumption", "readingTime": now - 5,
             "wNow": 1800.5},
            {"type": "eim", "activeCount": 1, "measurementType": "net-consumption", "readingTime": now - 5,
             "wNow": -510.1},
        ]
    return body


def _envoy_config(world_dir: Path, **envoy: str) -> Path:
    settings = {"host": "envoy.test", "token": ENVOY_TOKEN, "cert_sha256": "", **envoy}
    return write_config(world_dir, {"collector": {"source": "envoy", "timeout": "5"}, "envoy": settings})


def _production_routes(reply: Reply) -> dict:
    def route(request) -> Reply:  # noqa: ANN001
        if request.headers.get("authorization") != f"Bearer {ENVOY_TOKEN}":
            return Reply(401, "", content_type="text/html")
        return reply

    return {PRODUCTION: route}


def test_envoy_metered_reading_with_consumption_and_first_contact_pin(world: World, world_dir: Path,
                                                                      certs: Certificates) -> None:
    cert = certs.self_signed("one")
    config = _envoy_config(world_dir)
    with ApiServer("envoy.test", *cert, _production_routes(Reply(200, production()))) as server:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert server.calls(PRODUCTION)[0].query == {"details": "1"}
    info = status(world, config)
    assert info["watts"] == pytest.approx(2310.4) and info["mode"] == "drm0"
    assert info["extra"] == {"consumption_watts": 1800.5, "net_watts": -510.1}
    assert _log(world_dir, "plot.log").strip().endswith(",2310,drm0,100,1800,-510")
    learned = json.loads((world_dir / "state" / "envoy-cert.json").read_text())
    assert learned["sha256"] == certs.fingerprint(cert[0]) and learned["host"] == "envoy.test"
    assert "recorded the certificate of envoy.test on first contact" in _log(world_dir)
    assert ENVOY_TOKEN not in _everything_visible(world_dir, run)


def test_envoy_a_different_certificate_later_is_refused_before_the_token_is_sent(
        world: World, world_dir: Path, certs: Certificates) -> None:
    first, second = certs.self_signed("one"), certs.self_signed("two")
    config = _envoy_config(world_dir)
    with ApiServer("envoy.test", *first, _production_routes(Reply(200, production()))):
        assert world.dreadpi("run", "-c", str(config)).returncode == 0
    with ApiServer("envoy.test", *second, _production_routes(Reply(200, production()))) as impostor:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    assert impostor.requests == []  # the handshake failed the pin: no request, so no token, ever reached it
    reason = reason_of(world, config)
    assert (f"certificate of envoy.test has SHA-256 {certs.fingerprint(second[0])}, not the pinned "
            f"{certs.fingerprint(first[0])}") in reason
    assert "delete that file to accept the new certificate" in reason


def test_envoy_configured_pin_is_checked(world: World, world_dir: Path, certs: Certificates) -> None:
    cert = certs.self_signed("one")
    right = certs.fingerprint(cert[0])
    wrong = "ab" * 32
    with ApiServer("envoy.test", *cert, _production_routes(Reply(200, production()))) as server:
        bad = world.dreadpi("run", "-c", str(_envoy_config(world_dir, cert_sha256=wrong)))
        assert bad.returncode == 4 and server.requests == []
        assert f"has SHA-256 {right}, not the pinned {wrong}" in reason_of(world, world_dir / "dreadpi.cfg")
        colons = ":".join(right[i:i + 2] for i in range(0, 64, 2)).upper()
        good = world.dreadpi("run", "-c", str(_envoy_config(world_dir, cert_sha256=colons)))
    assert good.returncode == 0, good.stderr
    assert not (world_dir / "state" / "envoy-cert.json").exists()  # pinned in the config: nothing to learn


def test_envoy_uses_inverters_without_a_production_ct_and_clamps_night_noise(world: World, world_dir: Path,
                                                                              certs: Certificates) -> None:
    cert = certs.self_signed("one")
    config = _envoy_config(world_dir)
    body = production(eim_active=0, eim_watts=3.9, inverter_watts=-2, consumption=False)
    with ApiServer("envoy.test", *cert, _production_routes(Reply(200, body))):
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    info = status(world, config)
    assert info["watts"] == 0 and info["mode"] == "drm2" and info["extra"] == {}


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(200, "<html><body>Please log in</body></html>", content_type="text/html"),
     "envoy: the gateway answered text/html, not JSON"),
    (Reply(401, "", content_type="text/html"), "envoy: token refused (HTTP 401); owner tokens expire"),
    (Reply(503, "Service Unavailable"), "envoy: the gateway is starting up (HTTP 503)"),
    (hang(), "envoy: no answer from envoy.test within"),
])
def test_envoy_failures_are_clean(world: World, world_dir: Path, certs: Certificates, reply: Reply,
                                  reason: str) -> None:
    cert = certs.self_signed("one")
    config = _envoy_config(world_dir, cert_sha256=certs.fingerprint(cert[0]))
    routes = {PRODUCTION: lambda r: reply}
    with ApiServer("envoy.test", *cert, routes):
        run = world.dreadpi("run", "-c", str(config), timeout=30)
    assert run.returncode == 4
    info = status(world, config)
    assert info["mode"] == "drm0" and reason_of(world, config).startswith(reason), info["reason"]


def test_envoy_gateway_not_there(world: World, world_dir: Path) -> None:
    config = _envoy_config(world_dir, cert_sha256="ab" * 32)
    run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 4
    assert reason_of(world, config) == "envoy: cannot connect to envoy.test: connection refused"
