"""Health: whether dreadpi is doing its job, since when it is not, and why, carried from cycle to cycle.

Every way dreadpi breaks ends in the same safe place, the failsafe, so the failsafe alone says nothing about
what to fix. The health keeps the count of failsafe cycles in a row, when the run of failures began, the last
good reading, the class of the last problem (errors.PROBLEMS), the relay switches ever made, and when the
collector's credential expires, where that can be known without sending it anywhere.
"""

from __future__ import annotations

WARN_BEFORE = 30 * 86400  # credential warnings start this long before the end
WARN_EVERY = 86400  # and repeat at most once a day

FIELDS = ("consecutive_failsafe", "failing_since", "last_good_reading_at", "problem", "switches_total",
          "credential_expires_at", "credential_warned_at")


def switches(before: tuple | None, after: tuple) -> int:
    """Relays that changed state: a pin found not driven counts as de-energised, as its relay is."""
    previous = before if before is not None and len(before) == len(after) else (0,) * len(after)
    return sum(1 for old, new in zip(previous, after) if bool(old) != bool(new))


def after_cycle(saved, failsafe: bool, problem: str | None, reading_at: float | None, now: float,  # noqa: ANN001
                switched: int, expires_at: float | None) -> dict:
    """The health fields of the new state, from the saved state (state.State) and this cycle's facts."""
    failing = failsafe or problem is not None
    return {
        "consecutive_failsafe": saved.consecutive_failsafe + 1 if failsafe else 0,
        "failing_since": (saved.failing_since or now) if failing else None,
        "last_good_reading_at": reading_at if reading_at is not None and not failsafe else saved.last_good_reading_at,
        "problem": problem,
        "switches_total": saved.switches_total + switched,
        "credential_expires_at": expires_at,
        "credential_warned_at": saved.credential_warned_at,
    }


def credential_warning(health: dict, now: float, what: str, renew: str) -> str | None:
    """A sentence for the error log when the credential ends within WARN_BEFORE (at most once a day), and
    records that it was given; never the credential itself, only when it ends."""
    expires_at = health["credential_expires_at"]
    if expires_at is None or expires_at - now > WARN_BEFORE:
        return None
    if health["credential_warned_at"] and now - health["credential_warned_at"] < WARN_EVERY:
        return None
    health["credential_warned_at"] = now
    from dreadpi import clock

    when = clock.human(clock.local(expires_at))
    if expires_at <= now:
        return f"{what} expired at {when}: {renew}"
    return f"{what} expires at {when}, in {(expires_at - now) / 86400:.0f} days: {renew}"
