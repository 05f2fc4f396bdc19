"""`dreadpi plot`: one day as a picture: generation with the thresholds above (and the household's consumption
and net flow where the log or trace has them), the mode as a step line below.

matplotlib is an optional extra (`pip install dreadpi[plot]`), imported only here; a Pi never needs it.
"""

from __future__ import annotations

import time

from dreadpi import modes
from dreadpi.errors import DreadpiError
from dreadpi.policy import PolicySettings

WIDTH, HEIGHT, DPI = 12.0, 7.0, 100  # 1200 x 700 pixels


class PlotError(DreadpiError):
    exit_code = 2


def _matplotlib():  # noqa: ANN202
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plot needs matplotlib, which is optional: pip install 'dreadpi[plot]' (or apt install "
                        "python3-matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def day_of(steps: list, day: str | None) -> tuple:
    """(day, the steps of that local day); the last day in the data when none is asked for."""
    def local_day(step: tuple) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(step[0] + step[1]))

    if not steps:
        raise PlotError("nothing to plot: no samples")
    wanted = day or local_day(steps[-1])
    chosen = [step for step in steps if local_day(step) == wanted]
    if not chosen:
        first, last = local_day(steps[0]), local_day(steps[-1])
        raise PlotError(f"--day {wanted}: no data that day; the data covers {first} to {last}")
    return wanted, chosen


def flows(samples: list) -> dict:
    """epoch -> (consumption, net) for the samples that have either (net from consumption - generation when the
    source gave only consumption); empty when the file has neither."""
    found = {}
    for sample in samples:
        used, net = sample.consumption, sample.net
        if used is None and net is None:
            continue
        if net is None and sample.watts is not None:
            net = used - sample.watts
        if used is None and sample.watts is not None:
            used = net + sample.watts
        found[sample.epoch] = (used, net)
    return found


def draw(steps: list, settings: PolicySettings, output: str, title: str, flow: dict | None = None,
         household_only: bool = False) -> None:
    """steps: (epoch, utc_offset, watts or None, mode) of one day; `flow`: epoch -> (consumption, net) where
    known (`household_only`: a trace's household load without the air conditioner, so no net flow is drawn)."""
    plt = _matplotlib()
    hours = [((epoch + offset) % 86400) / 3600.0 for epoch, offset, _, _ in steps]
    watts = [float("nan") if w is None else w for _, _, w, _ in steps]
    percent = [modes.PERCENT[mode] if mode else float("nan") for _, _, _, mode in steps]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(WIDTH, HEIGHT), dpi=DPI,
                                         gridspec_kw={"height_ratios": (3, 1.4)})
    top.plot(hours, watts, color="#e69f00", linewidth=1.4, label="generation")
    top.fill_between(hours, watts, color="#e69f00", alpha=0.15)
    for name, colour in (("threshold_high", "#009e73"), ("threshold_low", "#d55e00"), ("threshold_off", "#000000")):
        value = getattr(settings, name)
        if value is None:
            continue
        top.axhline(value, color=colour, linestyle="--", linewidth=1)
        top.text(0.2, value, f" {name} {value:g} W", color=colour, va="bottom", fontsize=9)
    if flow and any(epoch in flow for epoch, *_ in steps):
        def series(i: int) -> list:
            return [float("nan") if flow.get(e, (None, None))[i] is None else flow[e][i] for e, *_ in steps]

        top.plot(hours, series(0), color="#56b4e9", linewidth=1.2,
                 label="household load (without the AC)" if household_only else "consumption")
        if not household_only:
            top.plot(hours, series(1), color="#000000", linewidth=1.0, linestyle=":", label="net (< 0: export)")
            top.axhline(0, color="#000000", linewidth=0.6)
        top.legend(loc="upper right", fontsize=9)
    top.set_ylabel("solar generation (W)" if not flow else "watts")
    top.set_title(title)
    top.grid(alpha=0.3)
    bottom.step(hours, percent, where="post", color="#0072b2", linewidth=1.6)
    changes = [h for h, before, after in zip(hours[1:], percent, percent[1:]) if before != after]
    for hour in changes:
        bottom.axvline(hour, color="#cc79a7", alpha=0.5, linewidth=0.8)
        top.axvline(hour, color="#cc79a7", alpha=0.25, linewidth=0.8)
    bottom.set_yticks([0, 50, 75, 100], ["drm1 0%", "drm2 50%", "drm3 75%", "drm0 100%"])
    bottom.set_ylim(-8, 108)
    bottom.set_ylabel("AC allowed")
    bottom.set_xlabel(f"local time (h); {len(changes)} relay switches")
    bottom.set_xlim(0, 24)
    bottom.set_xticks(range(0, 25, 3))
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(output, dpi=DPI)
    except OSError as err:
        raise PlotError(f"-o {output}: cannot write: {err.strerror or err}") from None
    finally:
        plt.close(figure)
