"""The floor of daylight AC-caused import against daylight AC energy: what perfect foresight could do.

A DRED has leverage only while the sun is up, and there every cut in import costs AC energy (comfort), so a
policy is judged by where it lands on the plane (daylight AC energy, daylight AC-caused import), against the
least import *any* sequence of modes could have caused while delivering the same AC energy.

What is computed. Per daylight step t (generation > 0, the AC wanting to run at `w`), each mode m allowed by the
board gives the AC a draw d = w x cap(m) and causes import imp_t(d) = max(0, d - left_t), where left_t is the
solar the household leaves over (generation minus the household's own load, at least 0). The floor at energy E
is  min sum_t imp_t(d_t)  subject to  sum_t d_t >= E,  one mode per step, perfect foresight, no dwell.

imp_t is convex in d, so the step's options lie on their own lower convex hull, and its increments (from one
mode to the next less restrictive one) have non-decreasing marginal import per marginal AC kWh. The Lagrangian
relaxation of the energy constraint is then solved exactly by a greedy: start every step in its most restrictive
mode, and take the increments of all steps in order of marginal import per marginal kWh until E is reached (the
last one fractionally). That is the exact optimum over the convex hull (time-sharing between adjacent modes
within a step); a pure per-step choice is at most one increment (one step's 25 % of the AC) above it, which over
a year is nothing. Built once per trace and AC; `at(E)` is a bisection.
"""

from __future__ import annotations

import bisect

from dreadpi import modes


class Frontier:
    """The floor as a piecewise-linear, convex, non-decreasing function of daylight AC energy (kWh)."""

    def __init__(self, base_kwh: float, base_import_kwh: float, increments: list) -> None:
        increments.sort()
        self.energy = [base_kwh]
        self.imports = [base_import_kwh]
        energy, imported = base_kwh, base_import_kwh
        for _, d_energy, d_import in increments:
            energy += d_energy
            imported += d_import
            self.energy.append(energy)
            self.imports.append(imported)

    @property
    def least(self) -> float:
        """Daylight AC energy with every step in the most restrictive mode."""
        return self.energy[0]

    @property
    def most(self) -> float:
        """Daylight AC energy with the AC never restricted."""
        return self.energy[-1]

    def at(self, energy_kwh: float) -> float:
        """The least daylight import (kWh) for delivering at least `energy_kwh` of daylight AC energy."""
        if energy_kwh <= self.energy[0]:
            return self.imports[0]
        if energy_kwh >= self.energy[-1]:
            return self.imports[-1]
        i = bisect.bisect_left(self.energy, energy_kwh)
        e0, e1, i0, i1 = self.energy[i - 1], self.energy[i], self.imports[i - 1], self.imports[i]
        return i0 + (i1 - i0) * (energy_kwh - e0) / (e1 - e0) if e1 > e0 else i1

    def points(self, count: int = 11) -> list:
        """(energy, import) pairs evenly spread from the least to the most energy, for tables and plots."""
        span = self.most - self.least
        return [(self.least + span * k / (count - 1), self.at(self.least + span * k / (count - 1)))
                for k in range(count)]


def build(steps: object, ac: object, step: float, household: object, lowest: str = "drm2") -> Frontier:
    """The floor over the steps `simulate` takes (simulate.walk: epoch, sample, watts the AC wants, each `step`
    seconds). `household(sample, watts, wants)` is simulate's reading of the household's own load; `lowest` is the
    most restrictive mode the policy may use (drm1 only where wired)."""
    load = getattr(ac, "load", 1.0)
    caps = [min(load, modes.PERCENT[m] / 100.0) for m in reversed(modes.ORDER[:modes.restriction(lowest) + 1])]
    hours = step / 3600.0 / 1000.0  # W x hours -> kWh
    base = base_import = 0.0
    increments: list = []
    add = increments.append
    for _, sample, wants in steps:
        watts = sample.watts
        if watts is None or watts <= 0 or not wants:
            continue
        house = household(sample, watts, wants) or 0.0
        left = watts - house if watts > house else 0.0
        draw = wants * caps[0]
        cost = draw - left if draw > left else 0.0
        base += draw * hours
        base_import += cost * hours
        for cap in caps[1:]:
            more = wants * cap
            more_cost = more - left if more > left else 0.0
            d_energy, d_import = (more - draw) * hours, (more_cost - cost) * hours
            if d_energy > 0:  # a part-load AC gains nothing from a cap above its load
                add((d_import / d_energy, d_energy, d_import))
            draw, cost = more, more_cost
    return Frontier(base, base_import, increments)
