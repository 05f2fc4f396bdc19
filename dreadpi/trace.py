"""Generation traces for `dreadpi simulate` and `dreadpi plot`: the CSV files people actually have.

Accepted, recognised from the first lines:
- plain `timestamp,watts[,consumption]` (optional header): ISO 8601 (`2026-01-15T12:00:00+11:00`, `...Z`, or
  naive = the given zone) or Unix seconds; the optional third column is the household's consumption without
  the air conditioner (the benchmark year's `greensboro-*-house-5min.csv.gz`);
- dreadpi's own plot log `iso,watts,mode,percent[,consumption,net]` (empty watts = no reading then);
  its consumption includes the air conditioner as it ran then (see simulate: it is taken out again);
- PVOutput's CSV export: a header naming `Date`, `Time` and a power column (`Power`, `Power Generation`,
  `Instantaneous Power`), and where the system uploads it a consumption column (`Power Used`, `Consumption`,
  `Power Consumption`); dates yyyymmdd, yyyy-mm-dd or dd/mm/yy(yy); times HH:MM or h:mmAM/PM.
Files may be gzip-compressed (`.gz`). Every problem names the file and line.
"""

from __future__ import annotations

import calendar
import re
from collections import namedtuple

from dreadpi.errors import DreadpiError

_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(?:\.\d+)?)?(Z|[+-]\d\d:?\d\d)?")
_POWER_NAMES = ("power", "power generation", "instantaneous power", "power (w)", "generation (w)")
_USED_NAMES = ("power used", "consumption", "power consumption", "consumption (w)")


class TraceError(DreadpiError):
    """The trace file cannot be read; the message names the file and the line."""

    exit_code = 2


class Sample(namedtuple("Sample", ("epoch", "offset", "watts", "mode", "consumption", "net"),
                        defaults=(None, None, None))):
    """A generation sample: Unix seconds, the UTC offset there, watts (None = no reading), the mode a plot log
    recorded (None in a trace), and where the file has them the household's consumption and net flow (W;
    net < 0 is export)."""

    __slots__ = ()
    epoch: float
    offset: int
    watts: float | None
    mode: str | None
    consumption: float | None
    net: float | None


def _open_text(path: str):  # noqa: ANN202
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (returned to a with-statement)


class _Zone:
    """Offsets for naive local times: a fixed zone is cheap; a named one asks zoneinfo (DST and all)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._zone = None
        if name:
            import zoneinfo

            try:
                self._zone = zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise TraceError(f"--timezone: unknown time zone {name!r}") from None

    def epoch(self, fields: tuple) -> tuple:
        """(epoch, offset) of a naive local (y, m, d, H, M, S)."""
        if self._zone is None:
            import time

            epoch = time.mktime((*fields, 0, 0, -1))
            return float(epoch), time.localtime(epoch).tm_gmtoff
        import datetime

        moment = datetime.datetime(*fields, tzinfo=self._zone)
        offset = int(moment.utcoffset().total_seconds())
        return calendar.timegm((*fields, 0, 0, 0)) - offset, offset


# (date, offset text) -> (epoch of that day's midnight there, offset): a year of 5-minute samples has 365 days
# but 105,120 timestamps, and parsing each in full was most of the time `simulate` took to read a trace.
_DAYS: dict = {}


def _iso(text: str, zone: _Zone) -> tuple:
    if len(text) == 25 and text[10] == "T" and text[19] in "+-":  # 2026-01-15T12:00:00+11:00, the common case
        day = _DAYS.get((text[:10], text[19:]))
        if day is not None:
            try:
                hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
            except ValueError:
                day = None
            else:
                if hour < 24 and minute < 60 and second < 60 and text[13] == text[16] == ":":
                    return day[0] + hour * 3600 + minute * 60 + second, day[1]
        if day is None:
            midnight = _iso_full(text[:11] + "00:00:00" + text[19:], zone)
            _DAYS[(text[:10], text[19:])] = midnight
    return _iso_full(text, zone)


def _iso_full(text: str, zone: _Zone) -> tuple:
    match = _ISO.fullmatch(text)
    if not match:
        raise ValueError(f"not a timestamp: {text[:40]!r}")
    y, mo, d, h, mi, s, tz = match.groups()
    fields = (int(y), int(mo), int(d), int(h), int(mi), int(s or 0))
    if tz is None:
        return zone.epoch(fields)
    if tz == "Z":
        offset = 0
    else:
        digits = tz[1:].replace(":", "")
        offset = (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * (1 if tz[0] == "+" else -1)
    return calendar.timegm((*fields, 0, 0, 0)) - offset, offset


def _timestamp(text: str, zone: _Zone) -> tuple:
    value = text.strip()
    if value.replace(".", "", 1).isdigit():
        import time

        epoch = float(value)
        return epoch, time.localtime(epoch).tm_gmtoff if not zone.name else zone.epoch(
            tuple(time.gmtime(epoch))[:6])[1]
    return _iso(value, zone)


_INFINITE = (float("inf"), float("-inf"))


def _watts(text: str) -> float | None:
    try:
        watts = float(text)  # takes surrounding spaces and NaN itself
    except ValueError:
        if not text.strip():
            return None
        raise
    if watts != watts or watts in _INFINITE:
        return None
    return watts


def load(path: str, timezone: str = "") -> list:
    """The samples of a trace, in time order; TraceError when the file cannot be used."""
    zone = _Zone(timezone)
    try:
        with _open_text(path) as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise TraceError(f"{path}: cannot read: {err.strerror or err}") from None
    rows = [(number, line) for number, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not rows:
        raise TraceError(f"{path}: no samples")
    header = [cell.strip().lower() for cell in rows[0][1].split(",")]
    if "date" in header and "time" in header:
        samples = _pvoutput(path, rows, header, zone)
    else:
        if not _looks_like_data(rows[0][1]):
            rows = rows[1:]  # a header such as timestamp,watts
        samples = _plain(path, rows, zone)
    if not samples:
        raise TraceError(f"{path}: no samples")
    samples.sort(key=lambda sample: sample.epoch)
    return samples


def _looks_like_data(line: str) -> bool:
    first = line.split(",", 1)[0].strip()
    return bool(first[:1].isdigit())


def _plain(path: str, rows: list, zone: _Zone) -> list:
    samples = []
    for number, line in rows:
        cells = line.split(",")
        if len(cells) < 2:
            raise TraceError(f"{path}:{number}: expected timestamp,watts, got {line[:60]!r}")
        try:
            first = cells[0]
            epoch, offset = _iso(first, zone) if len(first) == 25 else _timestamp(first, zone)
            watts = _watts(cells[1])
        except ValueError as err:
            raise TraceError(f"{path}:{number}: {err}") from None
        mode = cells[2].strip() if len(cells) >= 4 and cells[2].strip().startswith("drm") else None
        try:
            if mode is not None:  # a plot log: consumption and net come fifth and sixth
                used = _watts(cells[4]) if len(cells) > 4 else None
                net = _watts(cells[5]) if len(cells) > 5 else None
            else:
                used, net = (_watts(cells[2]) if len(cells) > 2 else None), None
        except ValueError as err:
            raise TraceError(f"{path}:{number}: consumption: {err}") from None
        samples.append(Sample(epoch, offset, watts, mode, used, net))
    return samples


_DMY = re.compile(r"(\d\d)/(\d\d)/(\d\d(?:\d\d)?)")
_CLOCK = re.compile(r"(\d{1,2}):(\d\d)(?::\d\d)?\s*([AaPp][Mm])?")


def _pvoutput(path: str, rows: list, header: list, zone: _Zone) -> list:
    power = next((header.index(name) for name in _POWER_NAMES if name in header), None)
    if power is None:
        raise TraceError(f"{path}: a PVOutput export needs a Power column; found {', '.join(header)}")
    date_at, time_at = header.index("date"), header.index("time")
    used_at = next((header.index(name) for name in _USED_NAMES if name in header), None)
    samples = []
    for number, line in rows[1:]:
        cells = line.split(",")
        try:
            y, mo, d = _date(cells[date_at].strip())
            match = _CLOCK.fullmatch(cells[time_at].strip())
            if not match:
                raise ValueError(f"not a time: {cells[time_at].strip()[:20]!r}")
            hour, minute = int(match.group(1)), int(match.group(2))
            if match.group(3):
                hour = hour % 12 + (12 if match.group(3).lower() == "pm" else 0)
            epoch, offset = zone.epoch((y, mo, d, hour, minute, 0))
            watts = _watts(cells[power])
            used = _watts(cells[used_at]) if used_at is not None and used_at < len(cells) else None
        except (ValueError, IndexError) as err:
            raise TraceError(f"{path}:{number}: {err}") from None
        samples.append(Sample(epoch, offset, watts, None, used))
    return samples


def _date(text: str) -> tuple:
    if len(text) == 8 and text.isdigit():
        return int(text[:4]), int(text[4:6]), int(text[6:])
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        return int(text[:4]), int(text[5:7]), int(text[8:])
    match = _DMY.fullmatch(text)
    if match:
        year = int(match.group(3))
        return (year + 2000 if year < 100 else year), int(match.group(2)), int(match.group(1))
    raise ValueError(f"not a date: {text[:20]!r}")
