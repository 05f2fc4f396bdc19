"""The surplus basis: what would be spare if the air conditioner were off, and which modes that power covers.

spare = export + the air conditioner's own current draw. Export comes from the reading (generation minus
household consumption, or minus the net flow); the air conditioner's draw is not measured, so it is estimated
(`policy.ac_draw`):

- `allowed` (the default; it won in the simulator, see README "Surplus mode"): the AC draws what the mode in
  force lets it, `ac_watts` x the mode's cap. When the AC does run at its cap, spare = generation minus the rest
  of the house, whatever the mode: the AC's own load cancels out and cannot feed back into the decision.
- `learned`: the AC's rated input is learned from the consumption step seen across each mode change (a
  smoothed ratio of watts per step of cap), starting from `ac_watts`; then draw = learned x cap.
- `none`: no estimate, spare = export. The obvious trap (AC released, consumption rises, export falls, AC
  restricted ...): kept only so the simulator can show why it is wrong.

Pure functions of the reading and the previous cycle, used by `policy.decide` and so by `run` and `simulate`.
"""

from __future__ import annotations

from dreadpi import modes

ESTIMATORS = ("allowed", "learned", "none")
LEARN_RATE = 0.3  # weight of a new step in the learned rated input
MIN_CAP_STEP = 0.2  # a mode change smaller than this (in cap) says too little about the AC to learn from


def cap(mode: str | None) -> float:
    """The share of rated input a mode lets the AC use; no mode asserted yet means normal operation."""
    return modes.PERCENT[mode or "drm0"] / 100.0


def consumption(extra: dict | None, generation: float) -> float | None:
    """Household consumption (AC included) in watts from a reading's extra figures: measured, or net + solar."""
    if not extra:
        return None
    value = extra.get("consumption_watts")
    if value.__class__ is float and value == value:  # the common case, as collectors and the simulator give it
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    net = extra.get("net_watts")
    if isinstance(net, (int, float)) and not isinstance(net, bool) and net == net:
        return float(net) + generation
    return None


def bounds(ac_watts: float, margin: float) -> tuple:
    """(threshold_low, threshold_high) on the spare power: a mode is allowed when the spare power covers what
    the AC draws in it, less `margin` x ac_watts of import accepted: drm3 needs (0.75 - margin) x ac_watts, drm0
    (1 - margin) x ac_watts; below both, drm2 (50 %), the mildest restriction the board has.

    Why one margin for both modes and not a share of each mode's draw: the floor (dreadpi.frontier) is reached
    by releasing the AC step by step in order of marginal import per marginal AC kWh; a step from one mode to
    the next adds 0.25 x ac_watts, and its marginal import per kWh is at most lambda exactly when the spare power
    is at least the new mode's draw - 0.25 x lambda x ac_watts. So the optimal thresholds sit the same number of
    watts below each mode's draw: margin 0 runs on true surplus only, a larger one trades import for comfort
    (without min_dwell, this rule lands exactly on the floor in the simulator)."""
    return max(0.0, (0.75 - margin) * ac_watts), max(0.0, (1.0 - margin) * ac_watts)


def learn(learned: dict | None, ac_watts: float, previous_mode: str | None, house: float) -> dict:
    """The learner's memory after this reading: `rated` (W), and the cap and consumption of the last reading.

    A reading taken after a mode change shows the AC's step: (consumption now - consumption before) / (cap now -
    cap before). Steps of the wrong sign or beyond twice ac_watts are household noise and are ignored."""
    rated = ac_watts
    if learned and isinstance(learned.get("rated"), (int, float)):
        rated = float(learned["rated"])
        before_cap, before = learned.get("cap"), learned.get("house")
        now_cap = cap(previous_mode)
        if isinstance(before_cap, (int, float)) and isinstance(before, (int, float)) \
                and abs(now_cap - before_cap) >= MIN_CAP_STEP:
            seen = (house - before) / (now_cap - before_cap)
            if 0 < seen <= 2 * ac_watts:
                rated += LEARN_RATE * (seen - rated)
    return {"rated": round(rated, 1), "cap": cap(previous_mode), "house": round(house, 1)}


def ac_draw(estimator: str, ac_watts: float, previous_mode: str | None, learned: dict | None) -> float:
    """The AC's estimated draw now, while `previous_mode` is asserted."""
    if estimator == "none":
        return 0.0
    if estimator == "learned" and learned and isinstance(learned.get("rated"), (int, float)):
        return float(learned["rated"]) * cap(previous_mode)
    return ac_watts * cap(previous_mode)
