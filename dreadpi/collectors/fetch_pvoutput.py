"""PVOutput getstatus, inside the sandbox (see fetch_common for how this runs)."""

from __future__ import annotations

import fetch_common as common
from fetch_common import Failure

URL = "https://pvoutput.org/service/r2/getstatus.jsp"  # fixed: the key is only ever sent here
HOST = "pvoutput.org"
LOW_REMAINING = 5  # requests left in the hour below which the error log gets a warning


def work(settings: dict, result: dict) -> None:
    deadline = common.Deadline(settings["budget"])
    headers = {"X-Pvoutput-Apikey": settings["api_key"], "X-Pvoutput-SystemId": settings["system_id"],
               "X-Rate-Limit": "1"}
    answer = common.fetch(common.session(), "GET", URL, HOST, deadline, headers)
    _rate_limit(answer, result)
    if answer.status != 200:
        exceeded = answer.status == 403 and "exceeded" in answer.first_line().lower()
        raise Failure(_error(answer), "quota" if exceeded else common.status_problem(answer.status))
    if answer.content_type not in ("text/plain", ""):
        raise Failure(f"answered HTTP 200 with {answer.content_type}, not the status line")
    fields = answer.first_line(400).split(",")
    if len(fields) < 4:
        raise Failure(f"unexpected status line {answer.first_line(60)!r}")
    date, hhmm, power = fields[0].strip(), fields[1].strip(), fields[3].strip()
    if power.lower() == "nan" or not power:
        raise Failure(f"the status for {date} {hhmm} has no power generation value (NaN)")
    try:
        watts = float(power)
    except ValueError:
        raise Failure(f"power generation {power[:20]!r} is not a number") from None
    result["watts"] = watts
    result["at"] = _epoch(date, hhmm, settings.get("timezone") or "")
    consumption = fields[5].strip() if len(fields) > 5 else ""
    if consumption and consumption.lower() != "nan":
        try:
            result["extra"] = {"consumption_watts": float(consumption)}
        except ValueError:
            pass


def _epoch(date: str, hhmm: str, zone: str) -> float:
    """The status time is the PV system's local wall-clock time, not UTC."""
    import datetime

    try:
        naive = datetime.datetime.strptime(f"{date} {hhmm}", "%Y%m%d %H:%M")
    except ValueError:
        raise Failure(f"unexpected date/time {date[:10]!r} {hhmm[:8]!r} in the status") from None
    if zone:
        import zoneinfo

        try:
            tz = zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise Failure(f"time zone {zone!r} is not known on this system (install tzdata)", "config") from None
        return naive.replace(tzinfo=tz).timestamp()
    return naive.timestamp()  # a naive datetime is the local time of this machine


def _error(answer: common.Answer) -> str:
    """`Unauthorized 401: Invalid API Key` -> `401 Invalid API Key`, plus what to do about it."""
    line = answer.first_line()
    _, _, detail = line.partition(":")
    detail = detail.strip() if detail else ""
    if answer.content_type not in ("text/plain", "") or not detail:
        detail = f"unexpected answer ({answer.content_type or 'no content type'})"
    message = f"{answer.status} {detail}"
    if answer.status == 403 and "exceeded" in detail.lower():
        reset = answer.headers.get("x-rate-limit-reset", "")
        if reset.isdigit():
            import time

            message += f"; the limit resets at {time.strftime('%H:%M', time.localtime(int(reset)))}"
        message += "; run dreadpi less often (each run is one request)"
    elif answer.status == 401:
        message += "; check pvoutput.api_key and pvoutput.system_id (Settings > API Access on pvoutput.org)"
    elif answer.status == 400 and "no status" in detail.lower():
        message += "; the system has not uploaded a status today yet"
    return message


def _rate_limit(answer: common.Answer, result: dict) -> None:
    remaining = answer.headers.get("x-rate-limit-remaining", "")
    limit = answer.headers.get("x-rate-limit-limit", "")
    if remaining.isdigit() and int(remaining) <= LOW_REMAINING:
        of = f" of {limit}" if limit.isdigit() else ""
        result["warnings"].append(f"only {remaining}{of} PVOutput requests left this hour")


def run() -> None:
    common.main(work)
