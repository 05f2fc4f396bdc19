"""Replay a generation trace through the policy the cycle uses, and count what it would cost and save.

There is no second copy of the logic: every step calls `policy.decide` with a Reading, the Previous the cycle
would have saved, and an Instant carrying the trace's UTC offset, exactly as `dreadpi run` does. Steps are a
fixed cadence (a cron schedule); the reading at a step is the latest sample at or before it, so a gap in the
trace ages the reading and, past `max_age`, trips the failsafe just as stale data does in production.
"""

from __future__ import annotations

from collections import namedtuple

from dreadpi import modes
from dreadpi.clock import Instant
from dreadpi.policy import ActiveHours, PolicySettings, Previous, decide
from dreadpi.reading import Reading

DEFAULT_STEP = 300.0
ORIGINAL = {"hysteresis": 0.0, "min_dwell": 0.0}  # the original dreadpi: plain thresholds


class AirConditioner(namedtuple("AirConditioner", ("rated_watts", "demand"), defaults=(2000.0, None))):
    """An air conditioner drawing `rated_watts` when it wants to run (always, or inside the daily `demand`
    window), capped by the mode: drm3 75 %, drm2 50 %, drm1 0 %."""

    __slots__ = ()
    rated_watts: float
    demand: ActiveHours | None


class Run(namedtuple("Run", ("name", "figures", "steps"))):
    """One simulated policy: its summary figures, and per step (epoch, offset, watts or None, mode)."""

    __slots__ = ()
    name: str
    figures: dict
    steps: list


def simulate(samples: list, settings: PolicySettings | None, ac: AirConditioner, step: float = DEFAULT_STEP,
             name: str = "dreadpi", keep_steps: bool = False) -> Run:
    """`settings` None means no control at all: drm0 throughout (the first baseline)."""
    if not samples:
        raise ValueError("no samples to simulate")
    start, end = samples[0].epoch, samples[-1].epoch
    count = int((end - start) // step) + 1
    percent = modes.PERCENT
    demand = ac.demand
    rated = ac.rated_watts
    hours = step / 3600.0

    index, last = 0, len(samples) - 1
    mode, since = None, 0.0
    switches = failsafes = 0
    in_mode = dict.fromkeys(modes.ORDER, 0)
    ac_wh = solar_wh = 0.0
    steps: list = []
    for n in range(count):
        epoch = start + n * step
        while index < last and samples[index + 1].epoch <= epoch:
            index += 1
        sample = samples[index]
        watts = sample.watts
        if settings is None:
            decided, failsafe = "drm0", False
        else:
            reading = Reading(watts, sample.epoch, "trace") if watts is not None else None
            decision = decide(reading, Previous(mode, since), Instant(epoch, sample.offset), settings,
                              failure=None if reading else "no reading in the trace")
            decided, failsafe = decision.mode, decision.failsafe
        if decided != mode:
            if mode is not None:
                switches += 1
            mode, since = decided, epoch
        failsafes += failsafe
        in_mode[mode] += 1
        wants = rated if demand is None or demand.contains(int((epoch + sample.offset) // 60) % 1440) else 0.0
        draw = wants * percent[mode] / 100.0
        generation = watts if watts is not None and watts > 0 else 0.0
        ac_wh += draw * hours
        solar_wh += (draw if draw < generation else generation) * hours
        if keep_steps:
            steps.append((epoch, sample.offset, watts, mode))
    days = count * step / 86400.0
    figures = {
        "ac_kwh": round(ac_wh / 1000.0, 3),
        "solar_kwh": round(solar_wh / 1000.0, 3),
        "solar_share": round(solar_wh / ac_wh, 4) if ac_wh else None,
        "import_kwh": round((ac_wh - solar_wh) / 1000.0, 3),
        "switches_per_day": round(switches / days, 3) if days else 0.0,
        "switches": switches,
        "time_in_mode": {m: round(c / count, 4) for m, c in in_mode.items() if c},
        "failsafe_share": round(failsafes / count, 4),
        "days": round(days, 2),
        "steps": count,
    }
    return Run(name, figures, steps)


def compare(samples: list, settings: PolicySettings, ac: AirConditioner, step: float = DEFAULT_STEP,
            keep_steps: bool = False) -> list:
    """The configured policy and the two baselines, over the same trace."""
    return [
        simulate(samples, settings, ac, step, "dreadpi", keep_steps),
        simulate(samples, settings._replace(**ORIGINAL), ac, step, "original"),
        simulate(samples, None, ac, step, "no control"),
    ]


def parse_sweep(text: str) -> tuple:
    """`hysteresis=0,50,100` -> ("hysteresis", [0.0, 50.0, 100.0]); only numeric policy settings sweep."""
    name, eq, values = text.partition("=")
    name = name.strip()
    numeric = ("threshold_low", "threshold_high", "hysteresis", "min_dwell", "max_age")
    if not eq or name not in numeric:
        raise ValueError(f"--sweep: expected NAME=V1,V2,... with NAME one of {', '.join(numeric)}; got {text!r}")
    try:
        parsed = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep: values must be numbers, got {values!r}") from None
    if not parsed or any(v < 0 for v in parsed):
        raise ValueError(f"--sweep: give one or more values of at least 0, got {values!r}")
    return name, parsed


def sweep(samples: list, settings: PolicySettings, ac: AirConditioner, name: str, values: list,
          step: float = DEFAULT_STEP) -> list:
    runs = []
    for value in values:
        tried = settings._replace(**{name: value})
        if tried.threshold_low >= tried.threshold_high:
            raise ValueError(f"--sweep: {name}={value:g} puts threshold_low at or above threshold_high")
        runs.append(simulate(samples, tried, ac, step, f"{name}={value:g}"))
    return runs


def table(runs: list) -> str:
    """The figures side by side, for people."""
    rows = [("", *(run.name for run in runs))]
    pick = [
        ("AC energy (kWh)", lambda f: f"{f['ac_kwh']:.1f}"),
        ("covered by solar", lambda f: "-" if f["solar_share"] is None else f"{f['solar_share'] * 100:.1f} %"),
        ("grid import by AC (kWh)", lambda f: f"{f['import_kwh']:.1f}"),
        ("relay switches / day", lambda f: f"{f['switches_per_day']:.2f}"),
        *[(f"time in {m}", _mode_share(m)) for m in modes.ORDER],
        ("failsafe (stale/missing)", lambda f: f"{f['failsafe_share'] * 100:.1f} %"),
    ]
    for label, get in pick:
        rows.append((label, *(get(run.figures) for run in runs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def _mode_share(mode: str):  # noqa: ANN202
    return lambda figures: f"{figures['time_in_mode'].get(mode, 0) * 100:.1f} %"
