"""The manual over-ride, as one code path for everyone who can ask for it: `dreadpi override` on the Pi and
Home Assistant's select through `dreadpi mqtt-listen`. An override is a mode the board can assert and a
duration of at most a week (it must end by itself); it is written into the state under the cycle's lock and
applied at once by a full cycle, which also reports it (metrics, MQTT) as any cycle does."""

from __future__ import annotations

import time

from dreadpi import modes
from dreadpi.errors import UsageError

_DURATION = r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?"
MAX_OVERRIDE = 7 * 86400


def parse_duration(text: str) -> float:
    """`2h`, `90m`, `1h30m`, `45s` or plain seconds; at most a week, since an override must end by itself."""
    import re

    match = re.fullmatch(_DURATION, text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"--for: expected a duration such as 2h, 90m or 1h30m, got {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= MAX_OVERRIDE:
        raise UsageError(f"--for: must be more than 0 and at most 7 days, got {text!r}")
    return float(total)


def requested(cfg, mode: str, duration: str | None, now: float | None = None) -> dict | None:  # noqa: ANN001
    """The state's override for `mode` (or `clear`: None) lasting `duration`; UsageError says what is wrong."""
    if mode == "clear":
        if duration:
            raise UsageError("override clear takes no --for")
        return None
    if mode not in modes.ALL:
        raise UsageError(f"override: mode must be one of {', '.join(modes.ORDER)} or clear, got {mode!r}")
    if mode not in cfg.relays.patterns:
        raise UsageError(f"override: this board cannot assert {mode} (relays.{mode} is not set)")
    if not duration:
        raise UsageError("override: say how long with --for, e.g. --for 2h; an override always ends by itself")
    return {"mode": mode, "until": (time.time() if now is None else now) + parse_duration(duration)}


def apply(cfg, new_override: dict | None, accept=None):  # noqa: ANN001, ANN201 (Config, callable; cycle.Outcome)
    """Store the override under the cycle's lock, then run a cycle so it applies now, not at the next cron run.
    `accept(saved)`, when given, runs under the lock with the saved state.State before anything is written: it
    may raise to refuse, or note things in the state, which is saved with the override."""
    from dreadpi import cycle, lock
    from dreadpi import state as state_store

    cycle.prepare_dirs(cfg)
    wait = cfg.collector.timeout + 15
    with lock.held(cfg.state_dir, wait=wait):
        saved, _ = state_store.load(cfg.state_dir)
        if accept is not None:
            accept(saved)
        saved.override = new_override
        state_store.save(cfg.state_dir, saved)
    return cycle.run(cfg, lock_wait=wait)
