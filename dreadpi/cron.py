"""The cron schedule the cycles run on, so a cycle can say when the next one is due.

A monitor that only knows the last cycle's time cannot tell a Pi whose cron stopped from one whose schedule
pauses overnight (`*/15 5-21 * * *`). Each cycle therefore publishes when cron will start the next one; a
cycle that is overdue by a whole interval means cycles stopped. Only the five-field form the role writes is
understood: numbers, `*`, ranges, steps, lists, and three-letter month and day names.
"""

from __future__ import annotations

import time

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {3: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
          4: ("sun", "mon", "tue", "wed", "thu", "fri", "sat")}
_SEARCH_DAYS = 400  # a schedule that never runs within a year (31 February) has no next run


class Schedule:
    """A parsed schedule; `restricted_days` follows cron's rule that day-of-month and day-of-week are ORed when
    both are restricted."""

    def __init__(self, text: str) -> None:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"expected five fields (minute hour day month weekday), got {text!r}")
        self.text = text
        parsed = [_field(raw, *spec, index) for index, (raw, spec) in enumerate(zip(fields, _FIELDS))]
        self.minutes, self.hours, self.days, self.months, weekdays = parsed
        self.weekdays = {day % 7 for day in weekdays}  # 7 is Sunday too
        self.any_day = fields[2] == "*"
        self.any_weekday = fields[4] == "*"

    def _day_matches(self, day: int, weekday: int) -> bool:
        cron_weekday = (weekday + 1) % 7  # time.struct_time: Monday 0; cron: Sunday 0
        if self.any_day or self.any_weekday:
            return day in self.days and cron_weekday in self.weekdays
        return day in self.days or cron_weekday in self.weekdays

    def next_after(self, epoch: float) -> float | None:
        """The first run strictly after `epoch`, in this machine's local time (cron's), or None."""
        start = time.localtime(epoch - epoch % 60 + 60)
        times = sorted(hour * 60 + minute for hour in self.hours for minute in self.minutes)
        for offset in range(_SEARCH_DAYS):
            day = time.localtime(time.mktime((start.tm_year, start.tm_mon, start.tm_mday + offset, 12, 0, 0, 0, 0,
                                              -1)))
            if day.tm_mon not in self.months or not self._day_matches(day.tm_mday, day.tm_wday):
                continue
            earliest = start.tm_hour * 60 + start.tm_min if offset == 0 else 0
            for minute_of_day in times:
                if minute_of_day >= earliest:
                    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, minute_of_day // 60,
                                        minute_of_day % 60, 0, 0, 0, -1))
        return None

    def interval(self) -> float:
        """The usual gap between runs, in seconds: the shortest between two runs of one day (wrapping round
        midnight), which is what the schedule does while it is running."""
        times = sorted(hour * 60 + minute for hour in self.hours for minute in self.minutes)
        gaps = [later - earlier for earlier, later in zip(times, times[1:])] + [times[0] + 1440 - times[-1]]
        return float(min(gaps) * 60)


def _field(raw: str, name: str, low: int, high: int, index: int) -> set:
    values: set = set()
    for part in raw.lower().split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ValueError(f"{name}: step {step_text!r} is not a number") from None
        if step < 1:
            raise ValueError(f"{name}: step must be at least 1")
        if span == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = span.partition("-")
            first = _value(first_text, name, low, high, index)
            last = _value(last_text, name, low, high, index) if dash else (high if step_text else first)
            if last < first:
                raise ValueError(f"{name}: range {span!r} runs backwards")
        values.update(range(first, last + 1, step))
    return values


def _value(text: str, name: str, low: int, high: int, index: int) -> int:
    names = _NAMES.get(index, ())
    if text in names:
        return names.index(text) + (1 if index == 3 else 0)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is outside {low}-{high}")
    return value
