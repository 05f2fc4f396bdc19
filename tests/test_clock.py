"""Local time as (epoch, offset): the stamps in the logs and the minute of day the policy reads."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from dreadpi import clock
from dreadpi.clock import Instant

MOMENT = datetime(2026, 1, 15, 1, 2, 3, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("offset", [0, 11 * 3600, 10 * 3600 + 1800, -5 * 3600, -(3 * 3600 + 1800)])
def test_iso_matches_datetime(offset):
    expected = datetime.fromtimestamp(MOMENT, timezone(timedelta(seconds=offset))).isoformat(timespec="seconds")
    assert clock.iso(Instant(MOMENT, offset)) == expected


def test_minute_of_day_wraps_with_the_offset():
    assert Instant(MOMENT, 0).minute_of_day() == 62
    assert Instant(MOMENT, 11 * 3600).hhmm() == "12:02"
    assert Instant(MOMENT, -2 * 3600).hhmm() == "23:02"


def test_local_uses_the_time_zone_of_that_moment(monkeypatch):
    monkeypatch.setenv("TZ", "Australia/Sydney")
    time.tzset()
    try:
        summer = datetime(2026, 1, 15, tzinfo=timezone.utc).timestamp()
        winter = datetime(2026, 7, 15, tzinfo=timezone.utc).timestamp()
        assert clock.local(summer).utc_offset == 11 * 3600
        assert clock.local(winter).utc_offset == 10 * 3600
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
