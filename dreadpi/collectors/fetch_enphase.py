"""Enphase Enlighten API v4, inside the sandbox (see fetch_common for how this runs).

Refreshing the access token also replaces the refresh token, and the old one stops working at once. The
child cannot write files, so every token it obtains goes into the result immediately, before anything else can
fail, and the root parent stores it before it looks at anything else.
"""

from __future__ import annotations

import time

import fetch_common as common
from fetch_common import Failure

BASE = "https://api.enphaseenergy.com"  # fixed: keys, secrets and tokens are only ever sent here
HOST = "api.enphaseenergy.com"
REFRESH_MARGIN = 300  # refresh an access token this many seconds before it expires


def work(settings: dict, result: dict) -> None:
    s = common.session()
    deadline = common.Deadline(settings["budget"])
    if settings.get("mode") == "authorize":
        _obtain(s, deadline, settings, result, {"grant_type": "authorization_code",
                                                "redirect_uri": settings["redirect_uri"], "code": settings["code"]})
        return
    access = settings.get("access_token") or ""
    refreshed = False
    if not access or float(settings.get("access_expires_at") or 0) - time.time() < REFRESH_MARGIN:
        access = _refresh(s, deadline, settings, result)
        refreshed = True
    answer = _summary(s, deadline, settings, access)
    if answer.status == 401 and not refreshed:  # revoked early: one refresh and one retry, never a loop
        access = _refresh(s, deadline, settings, result)
        answer = _summary(s, deadline, settings, access)
    if answer.status != 200:
        raise Failure(_api_error(answer, result, "summary"), common.status_problem(answer.status))
    body = answer.json("the summary")
    if not isinstance(body, dict):
        raise Failure("the summary is not a JSON object")
    result["watts"] = common.number(body.get("current_power"), "current_power")
    result["at"] = common.number(body.get("last_report_at"), "last_report_at")
    status = body.get("status")
    if isinstance(status, str) and status != "normal":
        result["warnings"].append(f"Enlighten reports system status {status[:20]!r} (not normal)")


def _summary(s: object, deadline: common.Deadline, settings: dict, access: str) -> common.Answer:
    url = f"{BASE}/api/v4/systems/{settings['system_id']}/summary"
    return common.fetch(s, "GET", f"{url}?key={settings['api_key']}", HOST, deadline,
                        {"Authorization": f"Bearer {access}"})


def _refresh(s: object, deadline: common.Deadline, settings: dict, result: dict) -> str:
    token = settings.get("refresh_token") or ""
    if not token:
        result["reauthorise"] = True
        raise Failure("not authorised yet: run dreadpi enphase-auth (or set enphase.refresh_token)", "auth")
    return _obtain(s, deadline, settings, result, {"grant_type": "refresh_token", "refresh_token": token})


def _obtain(s: object, deadline: common.Deadline, settings: dict, result: dict, params: dict) -> str:
    import base64
    import urllib.parse

    basic = base64.b64encode(f"{settings['client_id']}:{settings['client_secret']}".encode()).decode()
    url = f"{BASE}/oauth/token?{urllib.parse.urlencode(params)}"
    answer = common.fetch(s, "POST", url, HOST, deadline, {"Authorization": f"Basic {basic}"})
    if answer.status != 200:
        if answer.status in (400, 401):
            body = _json_or_empty(answer)
            code = str(body.get("error", ""))[:40]
            if code == "invalid_client":
                raise Failure("the token endpoint refused enphase.client_id / enphase.client_secret "
                              f"(HTTP {answer.status} invalid_client)", "config")
            result["reauthorise"] = True
            what = "authorisation code" if params["grant_type"] == "authorization_code" else "refresh token"
            raise Failure(f"the {what} was refused (HTTP {answer.status} {code or 'error'}): it expires after a "
                          "month without use and each one works once; re-authorise with: dreadpi enphase-auth", "auth")
        raise Failure(_api_error(answer, result, "token refresh"), common.status_problem(answer.status))
    body = answer.json("the token endpoint")
    if not isinstance(body, dict):
        raise Failure("the token endpoint did not answer a JSON object")
    access, refresh = body.get("access_token"), body.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise Failure("the token endpoint answered without access_token and refresh_token")
    lifetime = body.get("expires_in")
    lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else 3600.0
    result["tokens"] = {"access_token": access, "refresh_token": refresh,
                        "access_expires_at": time.time() + max(0.0, min(lifetime, 30 * 86400.0))}
    return access


def _json_or_empty(answer: common.Answer) -> dict:
    try:
        body = answer.json("the API")
    except Failure:
        return {}
    return body if isinstance(body, dict) else {}


def _api_error(answer: common.Answer, result: dict, what: str) -> str:
    body = _json_or_empty(answer)
    if answer.status in (429, 409):
        end = body.get("period_end")
        if isinstance(end, (int, float)) and not isinstance(end, bool) and end == end:
            result["quota_until"] = float(end)
            return f"quota exhausted until {time.strftime('%Y-%m-%d %H:%M', time.localtime(end))}"
        result["quota_until"] = time.time() + 3600.0
        return f"quota exhausted (HTTP {answer.status}, no period_end); no call for an hour"
    detail = body.get("details") or body.get("message") or answer.first_line(80)
    detail = str(detail)[:120] if detail else "no details"
    if answer.status == 401:
        return f"401 Not Authorized ({detail}): check enphase.api_key and enphase.system_id"
    if answer.status >= 500:
        return f"{answer.status} {detail} (Enlighten is having trouble; the next cycle tries again)"
    return f"{what}: HTTP {answer.status} {detail}"


def run() -> None:
    common.main(work)
