"""Local wall-clock time as plain numbers: (Unix seconds, UTC offset in seconds).

The policy needs the local time of day (active hours, the override's expiry), the logs need ISO 8601 stamps.
Carrying the offset explicitly keeps the policy pure (the simulator supplies offsets from its trace, DST and
all), and avoids importing datetime, whose pure-Python fallback costs a Pi Zero noticeable start-up time.
"""

from __future__ import annotations

import time


class Instant(tuple):
    """(epoch, utc_offset): a moment, and the offset of the local clock at that moment."""

    __slots__ = ()

    def __new__(cls, epoch: float, utc_offset: int = 0) -> Instant:
        return tuple.__new__(cls, (float(epoch), int(utc_offset)))

    @property
    def epoch(self) -> float:
        return self[0]

    @property
    def utc_offset(self) -> int:
        return self[1]

    def minute_of_day(self) -> int:
        """Minutes since local midnight."""
        return int((self.epoch + self.utc_offset) // 60) % 1440

    def hhmm(self) -> str:
        minutes = self.minute_of_day()
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    def at(self, epoch: float) -> Instant:
        """Another moment, read with this moment's offset (good for hours ahead, not across a DST change)."""
        return Instant(epoch, self.utc_offset)


def local(epoch: float) -> Instant:
    """The moment with the machine's own time zone offset at that moment."""
    return Instant(epoch, time.localtime(epoch).tm_gmtoff)


def now() -> Instant:
    return local(time.time())


def iso(moment: Instant) -> str:
    """ISO 8601 with the local offset, to the second: 2026-01-15T12:00:00+11:00."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(moment.epoch) + moment.utc_offset))
    sign = "+" if moment.utc_offset >= 0 else "-"
    hours, minutes = divmod(abs(moment.utc_offset) // 60, 60)
    return f"{stamp}{sign}{hours:02d}:{minutes:02d}"


def human(moment: Instant) -> str:
    """2026-01-15 12:00:00, local: for the one line a cycle prints."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(moment.epoch) + moment.utc_offset))
