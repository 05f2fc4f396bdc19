"""The policy is a pure function; these tests pin down its rules and then check its promises with hypothesis."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreadpi import modes
from dreadpi.clock import Instant
from dreadpi.policy import ActiveHours, Override, PolicySettings, Previous, decide, level
from dreadpi.reading import Reading

OFFSET = 11 * 3600  # Sydney in summer
T = datetime(2026, 1, 15, 12, 0, tzinfo=timezone(timedelta(seconds=OFFSET))).timestamp()
NOW = Instant(T, OFFSET)
PLAIN = PolicySettings(hysteresis=0, min_dwell=0)


def fresh(watts: float, age: float = 60) -> Reading:
    return Reading(watts=watts, at=T - age, source="test")


@pytest.mark.parametrize(("watts", "mode"), [
    (0, "drm2"), (399.9, "drm2"), (400, "drm3"), (699, "drm3"), (700, "drm0"), (5000, "drm0"),
])
def test_original_thresholds(watts, mode):
    decision = decide(fresh(watts), Previous(), NOW, PLAIN)
    assert decision.mode == mode
    assert not decision.failsafe
    assert f"{watts:.0f} W" in decision.reason


def test_drm1_below_threshold_off():
    policy = PolicySettings(threshold_off=100, hysteresis=0, min_dwell=0)
    assert decide(fresh(50), Previous(), NOW, policy).mode == "drm1"
    assert decide(fresh(150), Previous(), NOW, policy).mode == "drm2"


def test_hysteresis_needs_the_reading_to_clear_the_threshold():
    policy = PolicySettings(hysteresis=50, min_dwell=0)
    in_drm2 = Previous("drm2", T - 3600)
    assert decide(fresh(420), in_drm2, NOW, policy).mode == "drm2"
    assert "hysteresis" in decide(fresh(420), in_drm2, NOW, policy).reason
    assert decide(fresh(460), in_drm2, NOW, policy).mode == "drm3"
    # Cleared the low threshold by enough, and the high one without the margin: only part of the way up.
    partial = decide(fresh(720), in_drm2, NOW, policy)
    assert partial.mode == "drm3"
    assert partial.reason == "720 W cleared threshold_low + hysteresis (450 W)"
    full = decide(fresh(760), in_drm2, NOW, policy)
    assert (full.mode, full.reason) == ("drm0", "760 W cleared threshold_high + hysteresis (750 W)")


def test_hysteresis_does_not_delay_a_more_restrictive_mode():
    policy = PolicySettings(hysteresis=200, min_dwell=0)
    assert decide(fresh(690), Previous("drm0", T - 3600), NOW, policy).mode == "drm3"


def test_dwell_holds_a_normal_change_and_says_for_how_long():
    policy = PolicySettings(hysteresis=0, min_dwell=1200)
    held = decide(fresh(900), Previous("drm2", T - 300), NOW, policy)
    assert held.mode == "drm2"
    assert "min_dwell (900 s left)" in held.reason
    assert decide(fresh(900), Previous("drm2", T - 1200), NOW, policy).mode == "drm0"


def test_a_since_in_the_future_does_not_hold_forever():
    policy = PolicySettings(hysteresis=0, min_dwell=1200)
    assert decide(fresh(900), Previous("drm2", T + 86400), NOW, policy).mode == "drm0"


@pytest.mark.parametrize(("reading", "failure", "expect"), [
    (None, "script: timed out after 30 s", "timed out"),
    (None, None, "no reading"),
    (Reading(500, T - 1001), None, "1001 s old"),
    (Reading(500, T + 600), None, "in the future"),
    (Reading(float("nan"), T), None, "not finite"),
    (Reading(-5, T), None, "negative"),
    (Reading(float("inf"), T), None, "not finite"),
    (Reading(500, 12345), None, "2000"),
])
def test_failsafe_is_immediate_and_explained(reading, failure, expect):
    policy = PolicySettings(min_dwell=3600)
    decision = decide(reading, Previous("drm2", T - 10), NOW, policy, failure=failure)
    assert decision.mode == "drm0"
    assert decision.failsafe
    assert expect in decision.reason


def test_a_little_clock_skew_is_not_stale():
    assert not decide(Reading(500, T + 60), Previous(), NOW, PLAIN).failsafe


def test_failsafe_hold_keeps_the_last_mode_or_releases_on_first_run():
    policy = PolicySettings(failsafe="hold")
    assert decide(None, Previous("drm3", T - 10), NOW, policy).mode == "drm3"
    assert decide(None, Previous(), NOW, policy).mode == "drm0"


def test_failsafe_can_be_any_mode():
    assert decide(None, Previous(), NOW, PolicySettings(failsafe="drm2")).mode == "drm2"


def test_override_wins_until_it_expires():
    override = Override("drm0", T + 60)
    decision = decide(fresh(100), Previous("drm2", T - 10), NOW, PLAIN, override=override)
    assert decision.mode == "drm0"
    assert "manual override" in decision.reason
    assert "12:01" in decision.reason  # local time of the expiry
    expired = Override("drm0", T - 1)
    assert decide(fresh(100), Previous(), NOW, PLAIN, override=expired).mode == "drm2"


def test_leaving_a_manual_mode_is_not_held_by_the_dwell():
    policy = PolicySettings(min_dwell=3600, hysteresis=0)
    assert decide(fresh(100), Previous("drm0", T - 10, manual=True), NOW, policy).mode == "drm2"
    assert decide(fresh(100), Previous("drm0", T - 10), NOW, policy).mode == "drm0"


def test_override_beats_the_failsafe():
    decision = decide(None, Previous(), NOW, PolicySettings(), failure="boom", override=Override("drm2", T + 60))
    assert decision.mode == "drm2"
    assert not decision.failsafe


@pytest.mark.parametrize(("window", "hour", "inside"), [
    ("05:00-21:00", 12, True), ("05:00-21:00", 4, False), ("05:00-21:00", 21, False),
    ("22:00-06:00", 23, True), ("22:00-06:00", 3, True), ("22:00-06:00", 12, False), ("00:00-24:00", 23, True),
])
def test_active_hours(window, hour, inside):
    policy = PolicySettings(active_hours=ActiveHours.parse(window), outside_mode="drm3", hysteresis=0, min_dwell=0)
    now = Instant(T + (hour - 12) * 3600, OFFSET)
    decision = decide(Reading(5000, now.epoch), Previous(), now, policy)
    assert decision.mode == ("drm0" if inside else "drm3")
    if not inside:
        assert window in decision.reason


@pytest.mark.parametrize("text", ["5-21", "05:00-05:00", "25:00-06:00", "05:00-24:30", "05:60-06:00", ""])
def test_active_hours_rejects_nonsense(text):
    with pytest.raises(ValueError):
        ActiveHours.parse(text)


# ---- properties ----------------------------------------------------------------------------------------------

watts = st.floats(min_value=0, max_value=20000, allow_nan=False)
policies = st.fixed_dictionaries({
    "threshold_low": st.floats(0, 1000), "threshold_high": st.floats(1001, 5000),
    "hysteresis": st.floats(0, 500), "min_dwell": st.floats(0, 3600),
    "failsafe": st.sampled_from(["drm0", "drm2", "hold"]),
}).map(lambda values: PolicySettings(**values))
previous = st.tuples(st.sampled_from([None, *modes.ORDER[:3]]), st.floats(T - 7200, T)).map(lambda t: Previous(*t))


@settings(max_examples=300)
@given(policies, previous, watts)
def test_every_decision_is_one_known_mode(policy, prev, w):
    assert decide(fresh(w), prev, NOW, policy).mode in ("drm0", "drm3", "drm2")


@settings(max_examples=300)
@given(policies, previous, watts)
def test_no_change_inside_the_dwell_except_the_failsafe(policy, prev, w):
    decision = decide(fresh(w), prev, NOW, policy)
    if prev.mode is not None and T - prev.since < policy.min_dwell and not decision.failsafe:
        assert decision.mode == prev.mode


@settings(max_examples=200)
@given(policies, st.floats(0, 20000), st.integers(2, 30))
def test_a_constant_reading_never_flaps(policy, w, steps):
    prev = Previous()
    seen = []
    for step in range(steps):
        now = Instant(T + 900 * step, OFFSET)
        decision = decide(Reading(w, now.epoch), prev, now, policy)
        if decision.mode != prev.mode:
            prev = Previous(decision.mode, now.epoch)
        seen.append(decision.mode)
    assert len(set(seen)) == 1


@settings(max_examples=200)
@given(policies, previous, st.one_of(
    st.just(float("nan")), st.just(math.inf), st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False)))
def test_every_invalid_reading_gets_the_failsafe(policy, prev, w):
    decision = decide(Reading(w, T), prev, NOW, policy)
    assert decision.failsafe
    expected = (prev.mode or "drm0") if policy.failsafe == "hold" else policy.failsafe
    assert decision.mode == expected


@settings(max_examples=200)
@given(st.floats(0, 20000), st.floats(0, 20000))
def test_more_sun_never_means_a_more_restrictive_plain_level(a, b):
    low, high = sorted((a, b))
    assert modes.restriction(level(high, PLAIN)) <= modes.restriction(level(low, PLAIN))
