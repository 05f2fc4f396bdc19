"""The decision: solar watts in, demand response mode out. A pure function, so that the cycle, the tests and
the simulator all run exactly the same logic and it can be checked exhaustively without a Pi.
"""

from __future__ import annotations

from collections import namedtuple
from functools import lru_cache

from dreadpi import modes, surplus
from dreadpi.clock import Instant
from dreadpi.reading import Reading

# A reading dated this far in the future is still believed: clocks on a Pi and a cloud disagree a little.
FUTURE_TOLERANCE = 120.0

_WINDOW = r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)"

# Value types are namedtuples rather than dataclasses: importing dataclasses costs a Pi Zero more than a cycle.


class ActiveHours(namedtuple("ActiveHours", ("start", "end"))):
    """A daily window in local time, in minutes since midnight (end 1440 = 24:00); `end` before `start` wraps
    past midnight."""

    __slots__ = ()
    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> ActiveHours:
        import re

        match = re.fullmatch(_WINDOW, text.strip())
        if not match:
            raise ValueError(f"expected HH:MM-HH:MM such as 05:00-21:00, got {text.strip()!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h2 == 24 and m2 != 0:
            raise ValueError(f"24:{m2:02d} is not a time of day")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise ValueError("start and end are the same time; leave active_hours empty for all day")
        return cls(start, end)

    def contains(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


class PolicySettings(namedtuple(
    "PolicySettings",
    ("threshold_low", "threshold_high", "threshold_off", "hysteresis", "min_dwell", "max_age", "failsafe",
     "active_hours", "outside_mode", "basis", "ac_watts", "ac_draw", "margin"),
    defaults=(400.0, 700.0, None, 150.0, 1200.0, 1000.0, "drm0", None, "drm0", "generation", None, "allowed", 0.3),
)):
    """The `[policy]` section. Defaults keep the original dreadpi thresholds (basis `generation`)."""

    __slots__ = ()
    threshold_low: float
    threshold_high: float
    threshold_off: float | None  # below it drm1 (compressor off), only on boards that can assert it
    hysteresis: float
    min_dwell: float
    max_age: float
    failsafe: str  # a mode name, or "hold"
    active_hours: ActiveHours | None
    outside_mode: str
    basis: str  # "generation" (gross solar against the thresholds) or "surplus" (see dreadpi.surplus)
    ac_watts: float | None  # the air conditioner's rated input; needed by the surplus basis
    ac_draw: str  # how the surplus basis estimates the AC's current draw: allowed | learned | none
    margin: float  # surplus basis: share of ac_watts the spare power may fall short of a mode's draw by


class Override(namedtuple("Override", ("mode", "until"))):
    """A manual over-ride (AS/NZS 4755 requires one in the DRED), valid until `until` (Unix seconds)."""

    __slots__ = ()
    mode: str
    until: float

    def active(self, now: float) -> bool:
        return now < self.until


class Previous(namedtuple("Previous", ("mode", "since", "manual", "learned"), defaults=(None, 0.0, False, None))):
    """What the last cycle decided; `mode` is None when there is no usable state (first run, corrupt file).

    `manual` marks a mode a person chose with an override: leaving it is not held back by the dwell. `learned`
    is the surplus basis's memory of the air conditioner (dreadpi.surplus.learn), carried from cycle to cycle.
    """

    __slots__ = ()
    mode: str | None
    since: float
    manual: bool
    learned: dict | None


class Decision(namedtuple("Decision", ("mode", "reason", "failsafe", "manual", "learned", "fallback"),
                          defaults=(False, False, None, False))):
    """The chosen mode and the sentence explaining it; `failsafe` marks missing, stale or invalid data, and
    `manual` a person's override. With the surplus basis, `learned` is the memory for the next cycle and
    `fallback` says this reading had no consumption, so generation decided."""

    __slots__ = ()
    mode: str
    reason: str
    failsafe: bool
    manual: bool
    learned: dict | None
    fallback: bool

    @property
    def percent(self) -> int:
        return modes.PERCENT[self.mode]


def level(watts: float, settings: PolicySettings, shift: float = 0.0) -> str:
    """The plain threshold mode for `watts`, with every threshold raised by `shift`."""
    if settings.threshold_off is not None and watts < settings.threshold_off + shift:
        return "drm1"
    if watts < settings.threshold_low + shift:
        return "drm2"
    if watts < settings.threshold_high + shift:
        return "drm3"
    return "drm0"


# How the reasons name each threshold: the configured ones, or the surplus basis's, derived from the AC's draw.
_GENERATION_NAMES = {"threshold_off": "threshold_off", "threshold_low": "threshold_low",
                     "threshold_high": "threshold_high"}
_SURPLUS_NAMES = {"threshold_off": "threshold_off", "threshold_low": "drm3's draw - margin",
                  "threshold_high": "drm0's draw - margin"}


def _threshold_reason(watts: float, mode: str, settings: PolicySettings, names: dict = _GENERATION_NAMES) -> str:
    if mode == "drm1":
        return f"{watts:.0f} W is below {names['threshold_off']} ({settings.threshold_off:g} W)"
    if mode == "drm2":
        return f"{watts:.0f} W is below {names['threshold_low']} ({settings.threshold_low:g} W)"
    if mode == "drm3":
        return f"{watts:.0f} W is below {names['threshold_high']} ({settings.threshold_high:g} W)"
    return f"{watts:.0f} W is at or above {names['threshold_high']} ({settings.threshold_high:g} W)"


_LOWER_BOUND = {"drm2": "threshold_off", "drm3": "threshold_low", "drm0": "threshold_high"}


def _cleared_reason(watts: float, mode: str, settings: PolicySettings, names: dict = _GENERATION_NAMES) -> str:
    """Why a less restrictive mode was reached: the threshold below it was cleared with the margin."""
    name = _LOWER_BOUND[mode]
    value = getattr(settings, name) + settings.hysteresis
    return f"{watts:.0f} W cleared {names[name]} + hysteresis ({value:g} W)"


@lru_cache(maxsize=8)
def _surplus_settings(settings: PolicySettings, rated: float) -> PolicySettings:
    """The settings with the surplus basis's thresholds for an AC of `rated` watts; cached, as the simulator asks
    10^5 times a year with the same few."""
    low, high = surplus.bounds(rated, settings.margin)
    return settings._replace(threshold_low=low, threshold_high=high)


def _basis(reading: Reading, previous: Previous, settings: PolicySettings) -> tuple:
    """(watts to judge, settings with the thresholds that apply, reason prefix, names, learned, fallback)."""
    if settings.basis != "surplus":
        return reading.watts, settings, "", _GENERATION_NAMES, None, False
    house = surplus.consumption(reading.extra, reading.watts)
    if house is None:
        return (reading.watts, settings, "no consumption in this reading, generation basis this cycle: ",
                _GENERATION_NAMES, previous.learned, True)
    ac_watts = settings.ac_watts or 0.0
    learned = surplus.learn(previous.learned, ac_watts, previous.mode, house) if settings.ac_draw == "learned" \
        else None
    draw = surplus.ac_draw(settings.ac_draw, ac_watts, previous.mode, learned)
    export = reading.watts - house
    spare = export + draw
    rated = learned["rated"] if learned else ac_watts
    judged = _surplus_settings(settings, rated)
    prefix = f"spare {spare:.0f} W (export {export:.0f} W + AC ~{draw:.0f} W): "
    return spare, judged, prefix, _SURPLUS_NAMES, learned, False


def _failsafe(settings: PolicySettings, previous: Previous, why: str) -> Decision:
    if settings.failsafe == "hold":
        mode = previous.mode or "drm0"
        return Decision(mode, f"failsafe (hold {mode}): {why}", failsafe=True)
    return Decision(settings.failsafe, f"failsafe ({settings.failsafe}): {why}", failsafe=True)


def decide(
    reading: Reading | None,
    previous: Previous,
    now: Instant,
    settings: PolicySettings,
    *,
    failure: str | None = None,
    override: Override | None = None,
    max_watts: float = float("inf"),
) -> Decision:
    """Choose the mode for this cycle.

    `now` carries its UTC offset: active hours are local wall-clock time, ages are absolute. `failure` is the
    collector's error when there is no reading. The order is the order of authority: the person at the DRED,
    then the daily window, then the failsafe for bad data, then the thresholds tempered by hysteresis and dwell.
    """
    epoch = now.epoch

    if override is not None and override.active(epoch):
        until = now.at(override.until).hhmm()
        return Decision(override.mode, f"manual override to {override.mode} until {until}", manual=True)

    if settings.active_hours is not None and not settings.active_hours.contains(now.minute_of_day()):
        return Decision(settings.outside_mode, f"outside active hours {settings.active_hours}")

    if reading is None:
        return _failsafe(settings, previous, failure or "no reading")
    problem = reading.problem(max_watts)
    if problem:
        return _failsafe(settings, previous, f"invalid reading: {problem}")
    age = epoch - reading.at
    if age > settings.max_age:
        return _failsafe(settings, previous, f"reading is {age:.0f} s old (max_age {settings.max_age:g} s)")
    if -age > FUTURE_TOLERANCE:
        return _failsafe(settings, previous, f"reading is dated {-age:.0f} s in the future")

    watts, judged, prefix, names, learned, fallback = _basis(reading, previous, settings)
    target = level(watts, judged)
    reason = _threshold_reason(watts, target, judged, names)
    current = previous.mode
    if current is not None and modes.more_restrictive(current, target) and settings.hysteresis > 0:
        # Stepping up to a less restrictive mode: every threshold counts `hysteresis` higher, so a reading
        # hovering at a threshold cannot flap the relays.
        cleared = level(watts, judged, shift=settings.hysteresis)
        if modes.more_restrictive(current, cleared):
            target = cleared
            reason = _cleared_reason(watts, cleared, judged, names)
        else:
            reason = f"{watts:.0f} W has not cleared the threshold by hysteresis ({settings.hysteresis:g} W)"
            target = current
    reason = prefix + reason

    if current is not None and target != current and settings.min_dwell > 0 and not previous.manual:
        held = epoch - previous.since
        if 0 <= held < settings.min_dwell:
            left = settings.min_dwell - held
            return Decision(current, f"holding {current} for min_dwell ({left:.0f} s left); {reason}",
                            learned=learned, fallback=fallback)
    return Decision(target, reason, learned=learned, fallback=fallback)
