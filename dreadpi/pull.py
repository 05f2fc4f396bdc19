"""Pull mode's last outcome, as dreadpi-pull (roles/dreadpi_pull) records it after each run in the state directory:
time, outcome (ok, refused, failed), commit, reason and the last pull that applied. Read by `dreadpi status` and
the metrics; absent on a Pi that is not enrolled."""

from __future__ import annotations

import json
import os

FILENAME = "pull.json"


def load(state_dir: str) -> dict | None:
    """The record, None when there is none; an unreadable record is itself an outcome ("unknown")."""
    try:
        with open(os.path.join(state_dir, FILENAME)) as record:
            data = json.load(record)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"outcome": "unknown", "reason": f"cannot read {FILENAME}: {err}"}
    return data if isinstance(data, dict) else {"outcome": "unknown", "reason": f"{FILENAME} is not an object"}


def line(pull: dict) -> str:
    """One line for `dreadpi status`: the last pull, and when it did not apply, why and what is still in place."""
    commit = (pull.get("commit") or "")[:12]
    text = f"{pull.get('outcome', 'unknown')} at {pull.get('time', '?')}" + (f", commit {commit}" if commit else "")
    if pull.get("outcome") == "ok":
        return text + (f" ({pull['changed']} changed)" if pull.get("changed") is not None else "")
    last = pull.get("last_ok") or {}
    kept = f"; in place: the pull at {last.get('time')}, commit {(last.get('commit') or '')[:12]}" if last else ""
    return f"{text}: {pull.get('reason') or 'no reason recorded'}{kept}"


def epoch(when: object) -> float | None:
    """Epoch seconds of a recorded ISO 8601 time, None if there is none or it cannot be read."""
    import datetime  # only on an enrolled Pi: a cycle imports nothing more than it needs

    try:
        return datetime.datetime.fromisoformat(str(when)).timestamp() if when else None
    except ValueError:
        return None
