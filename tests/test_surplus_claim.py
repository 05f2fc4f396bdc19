"""The surplus basis's claim on the benchmark year (data/traces/greensboro-{5,8}kw-house-5min.csv.gz: the
generation traces with a richardsonpy household, tools/make_load.py), and the floor it is judged against."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreadpi import simulate, trace
from dreadpi.policy import PolicySettings
from tests.conftest import REPO

YEAR = REPO / "data" / "traces"
AC = simulate.AirConditioner(2500.0)  # wants to run all day
DEFAULTS = PolicySettings(ac_watts=2500.0)
# size: (least daylight cut in AC import per AC kWh, least share of the generation basis's daylight AC energy)
TARGETS = {"5": (0.10, 0.80), "8": (0.20, 0.85)}


@pytest.fixture(scope="module")
def year() -> dict:
    found = {}
    for size in TARGETS:
        samples = trace.load(str(YEAR / f"greensboro-{size}kw-house-5min.csv.gz"))
        found[size] = (samples, simulate.floor(samples, DEFAULTS, AC))
    return found


def test_the_benchmark_year_is_a_year_with_a_household(year):
    for samples, _ in year.values():
        assert len(samples) == 105120
        load = [s.consumption for s in samples]
        assert None not in load
        assert sum(load) / 12 / 1000 == pytest.approx(4000, rel=0.01)  # richardsonpy's 3-person house


@pytest.mark.parametrize("size", sorted(TARGETS))
def test_surplus_is_worth_having_at_its_defaults(year, size):
    samples, front = year[size]
    generation = simulate.simulate(samples, DEFAULTS, AC, name="generation")
    surplus = simulate.simulate(samples, DEFAULTS._replace(basis="surplus"), AC, name="surplus")
    simulate.add_floor([generation, surplus], front)
    claim = simulate.claim(generation, surplus)
    least_cut, least_energy = TARGETS[size]
    assert claim["cut"] >= least_cut, claim
    assert claim["energy_share"] >= least_energy, claim
    assert claim["switch_ratio"] <= 1.3, claim
    # Near-optimal: NOT met at the defaults. The rule itself is the floor's (next test); min_dwell's hold of
    # 20 minutes after every change is what costs 2-5 points. Held here so that a regression shows.
    assert claim["gap"] <= 0.05, claim


@pytest.mark.parametrize("size", sorted(TARGETS))
def test_without_the_dwell_the_surplus_rule_is_on_the_floor(year, size):
    samples, front = year[size]
    policy = DEFAULTS._replace(min_dwell=0)
    generation = simulate.simulate(samples, policy, AC, name="generation")
    surplus = simulate.simulate(samples, policy._replace(basis="surplus"), AC, name="surplus")
    simulate.add_floor([generation, surplus], front)
    assert simulate.claim(generation, surplus)["gap"] <= 0.015


def test_no_policy_beats_the_floor(year):
    samples, front = year["8"]
    runs = simulate.compare(samples, DEFAULTS, AC)
    assert [run.name for run in runs] == ["generation", "surplus", "original", "no control"]
    for run in runs:
        f = run.figures
        assert f["daylight_import_kwh"] >= f["daylight_floor_kwh"] - 1e-6, run.name
    assert runs[3].figures["daylight_floor_kwh"] == pytest.approx(front.imports[-1], abs=1e-3)


# -- the floor itself, against brute force ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 6000), st.floats(0, 4000)), min_size=1, max_size=6),
       st.floats(500, 4000))
def test_the_floor_is_below_every_sequence_and_reached_at_its_ends(steps, rated):
    samples = [trace.Sample(1_750_000_000.0 + i * 300, 0, g, None, h) for i, (g, h) in enumerate(steps)]
    ac = simulate.AirConditioner(rated)
    front = simulate.floor(samples, None, ac)
    caps = (0.5, 0.75, 1.0)
    hours = 300 / 3600 / 1000
    for choice in itertools.product(caps, repeat=len(steps)):
        energy = sum(rated * c * hours for c in choice)
        imported = sum(max(0.0, rated * c - max(0.0, g - h)) * hours for c, (g, h) in zip(choice, steps))
        assert front.at(energy) <= imported + 1e-9
    everything = [min(caps)] * len(steps), [max(caps)] * len(steps)
    for choice in everything:
        imported = sum(max(0.0, rated * c - max(0.0, g - h)) * hours for c, (g, h) in zip(choice, steps))
        energy = sum(rated * c * hours for c in choice)
        assert front.at(energy) == pytest.approx(imported, abs=1e-9)


def test_the_floor_takes_the_cheapest_ac_energy_first():
    # Step 1 has 2 kW spare, step 2 none: the AC's first extra kWh come from step 1, free.
    samples = [trace.Sample(0.0, 0, 2500.0, None, 500.0), trace.Sample(300.0, 0, 100.0, None, 500.0)]
    front = simulate.floor(samples, None, simulate.AirConditioner(2000.0), 300.0)
    h = 300 / 3600 / 1000
    assert front.least == pytest.approx(2 * 1000 * h) and front.at(front.least) == pytest.approx(1000 * h)
    assert front.at(front.least + 1000 * h) == pytest.approx(1000 * h)  # step 1 to drm0: covered by the sun
    assert front.at(front.most) == pytest.approx(2000 * h)  # step 2 at drm0 imports all of its 2 kW
