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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dreadpi.trace import Sample

DEFAULT_STEP = 300.0
ORIGINAL = {"hysteresis": 0.0, "min_dwell": 0.0}  # the original dreadpi: plain thresholds


class AirConditioner(namedtuple("AirConditioner", ("rated_watts", "demand", "load"), defaults=(2000.0, None, 1.0))):
    """An air conditioner drawing `load` x `rated_watts` when it wants to run (always, or inside the daily
    `demand` window), capped by the mode: drm3 75 %, drm2 50 %, drm1 0 %. `load` below 1 is an inverter unit
    running at part load, which a mode's cap above it does not restrict."""

    __slots__ = ()
    rated_watts: float
    demand: ActiveHours | None
    load: float

    def draw(self, wants: float, mode: str | None) -> float:
        """Watts drawn under `mode` (None: nothing asserted) when it wants `wants` x load."""
        cap = modes.PERCENT[mode or "drm0"] / 100.0
        return wants * (cap if cap < self.load else self.load)


class Run(namedtuple("Run", ("name", "figures", "steps"))):
    """One simulated policy: its summary figures, and per step (epoch, offset, watts or None, mode)."""

    __slots__ = ()
    name: str
    figures: dict
    steps: list


def _household(sample: Sample, watts: float | None, wants: float) -> float | None:
    """The household's load without the air conditioner at a sample, or None when the trace has none.

    A plot log's consumption includes the AC as it ran then, under the mode the log recorded, so that draw (as
    the simulated AC would have drawn it) is taken out; a trace's third column is the household alone."""
    used = sample.consumption
    if used is None and sample.net is not None and watts is not None:
        used = sample.net + watts
    if used is None:
        return None
    if sample.mode is not None:
        used -= wants * modes.PERCENT[sample.mode] / 100.0  # as an AC of the simulated size ran under that mode
    return used if used > 0 else 0.0


def walk(samples: list, ac: AirConditioner, step: float):  # noqa: ANN201 (a generator)
    """(epoch, sample, watts the AC wants) every `step` seconds from the first sample to the last: the latest
    sample at or before each step, as a cycle at that moment would have read it. One walk for the simulation
    and its floor, so both see exactly the same steps."""
    start, end = samples[0].epoch, samples[-1].epoch
    demand, rated = ac.demand, ac.rated_watts
    index, last = 0, len(samples) - 1
    for n in range(int((end - start) // step) + 1):
        epoch = start + n * step
        while index < last and samples[index + 1].epoch <= epoch:
            index += 1
        sample = samples[index]
        yield epoch, sample, (rated if demand is None or demand.contains(int((epoch + sample.offset) // 60) % 1440)
                              else 0.0)


def simulate(samples: list, settings: PolicySettings | None, ac: AirConditioner, step: float = DEFAULT_STEP,
             name: str = "dreadpi", keep_steps: bool = False) -> Run:
    """`settings` None means no control at all: drm0 throughout (the first baseline).

    Where the trace has the household's consumption, the AC's draw is added to it: the reading the policy sees
    carries the house's consumption with the AC as it ran under the mode in force, as a meter would show it,
    and the energy figures split the solar between the house and the AC (the house's own load comes first)."""
    if not samples:
        raise ValueError("no samples to simulate")
    if settings is not None and settings.basis == "surplus" and settings.ac_watts is None:
        settings = settings._replace(ac_watts=ac.rated_watts)  # the config did not say: the simulated AC's
    count = int((samples[-1].epoch - samples[0].epoch) // step) + 1
    hours = step / 3600.0

    mode, since, learned = None, 0.0, None
    switches = failsafes = fallbacks = 0
    in_mode = dict.fromkeys(modes.ORDER, 0)
    ac_wh = solar_wh = house_import_wh = export_wh = day_ac_wh = day_import_wh = 0.0
    has_house = False
    steps: list = []
    for epoch, sample, wants in walk(samples, ac, step):
        watts = sample.watts
        other = _household(sample, watts, wants)
        if settings is None:
            decided, failsafe = "drm0", False
        else:
            reading = None
            if watts is not None:
                extra = None
                if other is not None:  # what a consumption meter shows: the house plus the AC as it runs now
                    extra = {"consumption_watts": other + ac.draw(wants, mode)}
                reading = Reading(watts, sample.epoch, "trace", extra)
            decision = decide(reading, Previous(mode, since, False, learned), Instant(epoch, sample.offset),
                              settings, failure=None if reading else "no reading in the trace")
            decided, failsafe = decision.mode, decision.failsafe
            fallbacks += decision.fallback
            if decision.learned is not None:
                learned = decision.learned
        if decided != mode:
            if mode is not None:
                switches += 1
            mode, since = decided, epoch
        failsafes += failsafe
        in_mode[mode] += 1
        draw = ac.draw(wants, mode)
        generation = watts if watts is not None and watts > 0 else 0.0
        house = 0.0
        if other is not None:
            has_house, house = True, other
        left = generation - house if generation > house else 0.0  # solar the house leaves for the AC
        from_sun = draw if draw < left else left
        ac_wh += draw * hours
        solar_wh += from_sun * hours
        total = house + draw
        if total > generation:
            house_import_wh += (total - generation) * hours
        else:
            export_wh += (generation - total) * hours
        if generation > 0:
            day_ac_wh += draw * hours
            day_import_wh += (draw - from_sun) * hours
        if keep_steps:
            steps.append((epoch, sample.offset, watts, mode))
    days = count * step / 86400.0
    figures = {
        "ac_kwh": round(ac_wh / 1000.0, 3),
        "solar_kwh": round(solar_wh / 1000.0, 3),
        "solar_share": round(solar_wh / ac_wh, 4) if ac_wh else None,
        "import_kwh": round((ac_wh - solar_wh) / 1000.0, 3),
        "daylight_ac_kwh": round(day_ac_wh / 1000.0, 3),
        "daylight_import_kwh": round(day_import_wh / 1000.0, 3),
        "switches_per_day": round(switches / days, 3) if days else 0.0,
        "switches": switches,
        "time_in_mode": {m: round(c / count, 4) for m, c in in_mode.items() if c},
        "failsafe_share": round(failsafes / count, 4),
        "days": round(days, 2),
        "steps": count,
    }
    if has_house:
        figures["household_import_kwh"] = round(house_import_wh / 1000.0, 3)
        figures["export_kwh"] = round(export_wh / 1000.0, 3)
    if fallbacks:
        figures["generation_fallback_share"] = round(fallbacks / count, 4)
    return Run(name, figures, steps)


def has_household(samples: list) -> bool:
    """Whether the trace carries the household's consumption or net flow anywhere."""
    return any(sample.consumption is not None or sample.net is not None for sample in samples)


def compare(samples: list, settings: PolicySettings, ac: AirConditioner, step: float = DEFAULT_STEP,
            keep_steps: bool = False) -> list:
    """The configured policy and the two baselines, over the same trace. A trace with the household's
    consumption gets both bases side by side (`generation`, `surplus`, with the rest of the configured policy),
    and every run gets the daylight floor (dreadpi.frontier) at its own daylight AC energy."""
    if not has_household(samples):
        return [
            simulate(samples, settings, ac, step, "dreadpi", keep_steps),
            simulate(samples, settings._replace(**ORIGINAL), ac, step, "original"),
            simulate(samples, None, ac, step, "no control"),
        ]
    runs = [
        simulate(samples, settings._replace(basis="generation"), ac, step, "generation",
                 keep_steps and settings.basis == "generation"),
        simulate(samples, settings._replace(basis="surplus"), ac, step, "surplus",
                 keep_steps and settings.basis == "surplus"),
        simulate(samples, settings._replace(basis="generation", **ORIGINAL), ac, step, "original"),
        simulate(samples, None, ac, step, "no control"),
    ]
    add_floor(runs, floor(samples, settings, ac, step))
    return runs


def floor(samples: list, settings: PolicySettings | None, ac: AirConditioner, step: float = DEFAULT_STEP):  # noqa: ANN201
    """The daylight frontier's floor for this trace and AC (drm1 counts only where the policy can assert it)."""
    from dreadpi import frontier

    lowest = "drm1" if settings is not None and settings.threshold_off is not None else "drm2"
    return frontier.build(walk(samples, ac, step), ac, step, _household, lowest)


def add_floor(runs: list, front: object) -> None:
    """Each run's daylight import per AC kWh and the floor's at the same daylight AC energy."""
    for run in runs:
        f = run.figures
        energy = f["daylight_ac_kwh"]
        least = front.at(energy)
        f["daylight_floor_kwh"] = round(least, 3)
        f["daylight_import_per_kwh"] = round(f["daylight_import_kwh"] / energy, 4) if energy else None
        f["daylight_floor_per_kwh"] = round(least / energy, 4) if energy else None


def claim(generation: Run, surplus: Run) -> dict:
    """The surplus basis against the generation basis, in daylight: its cut in AC import per AC kWh, the best
    cut the floor allows at the surplus basis's own AC energy, its share of the generation basis's AC energy
    and its switches per day relative to the generation basis's."""
    g, s = generation.figures, surplus.figures
    base = g["daylight_import_kwh"] / g["daylight_ac_kwh"]
    cut = 1.0 - s["daylight_import_kwh"] / s["daylight_ac_kwh"] / base
    best = 1.0 - s["daylight_floor_kwh"] / s["daylight_ac_kwh"] / base
    return {
        "cut": round(cut, 4),
        "best_cut": round(best, 4),
        "gap": round(best - cut, 4),
        "energy_share": round(s["daylight_ac_kwh"] / g["daylight_ac_kwh"], 4),
        "switch_ratio": round(s["switches_per_day"] / g["switches_per_day"], 3) if g["switches_per_day"] else None,
    }


_SWEEP_CHOICES = {"basis": ("generation", "surplus"), "ac_draw": ("allowed", "learned", "none")}
_SURPLUS_ONLY = ("ac_draw", "margin")
_SWEEP_NUMBERS = ("threshold_low", "threshold_high", "hysteresis", "min_dwell", "max_age", "ac_watts", "cover")


def parse_sweep(text: str) -> tuple:
    """`hysteresis=0,50,100` -> ("hysteresis", [0.0, 50.0, 100.0]); `basis=generation,surplus` -> names."""
    name, eq, values = text.partition("=")
    name = name.strip()
    known = (*_SWEEP_NUMBERS, *_SWEEP_CHOICES)
    if not eq or name not in known:
        raise ValueError(f"--sweep: expected NAME=V1,V2,... with NAME one of {', '.join(known)}; got {text!r}")
    words = [v.strip() for v in values.split(",") if v.strip()]
    if name in _SWEEP_CHOICES:
        wrong = [w for w in words if w not in _SWEEP_CHOICES[name]]
        if not words or wrong:
            raise ValueError(f"--sweep: {name} takes {', '.join(_SWEEP_CHOICES[name])}; got {values!r}")
        return name, words
    try:
        parsed = [float(v) for v in words]
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
        if name in _SURPLUS_ONLY:  # sweeping a setting only the surplus basis reads means that basis
            tried = tried._replace(basis="surplus")
        if tried.threshold_low >= tried.threshold_high:
            raise ValueError(f"--sweep: {name}={value:g} puts threshold_low at or above threshold_high")
        label = f"{name}={value}" if isinstance(value, str) else f"{name}={value:g}"
        runs.append(simulate(samples, tried, ac, step, label))
    if has_household(samples):
        add_floor(runs, floor(samples, settings, ac, step))
    return runs


def table(runs: list) -> str:
    """The figures side by side, for people."""
    rows = [("", *(run.name for run in runs))]
    pick = [
        ("AC energy (kWh)", lambda f: f"{f['ac_kwh']:.1f}"),
        ("covered by solar", lambda f: "-" if f["solar_share"] is None else f"{f['solar_share'] * 100:.1f} %"),
        ("grid import by AC (kWh)", lambda f: f"{f['import_kwh']:.1f}"),
        ("relay switches / day", lambda f: f"{f['switches_per_day']:.2f}"),
        *(_HOUSEHOLD_ROWS if any("household_import_kwh" in run.figures for run in runs) else ()),
        *[(f"time in {m}", _mode_share(m)) for m in modes.ORDER],
        ("failsafe (stale/missing)", lambda f: f"{f['failsafe_share'] * 100:.1f} %"),
    ]
    for label, get in pick:
        rows.append((label, *(get(run.figures) for run in runs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def _kwh(key: str):  # noqa: ANN202
    return lambda figures: "-" if figures.get(key) is None else f"{figures[key]:.1f}"


def _per_kwh(key: str):  # noqa: ANN202
    return lambda figures: "-" if figures.get(key) is None else f"{figures[key] * 100:.1f} %"


_HOUSEHOLD_ROWS = (
    ("household import (kWh)", _kwh("household_import_kwh")),
    ("export wasted (kWh)", _kwh("export_kwh")),
    ("daylight AC energy (kWh)", _kwh("daylight_ac_kwh")),
    ("daylight import by AC (kWh)", _kwh("daylight_import_kwh")),
    ("  per daylight AC kWh", _per_kwh("daylight_import_per_kwh")),
    ("  floor at that AC energy", _per_kwh("daylight_floor_per_kwh")),
)


def _mode_share(mode: str):  # noqa: ANN202
    return lambda figures: f"{figures['time_in_mode'].get(mode, 0) * 100:.1f} %"
