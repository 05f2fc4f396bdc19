"""What the last cycle did, kept in one JSON file that is replaced atomically and recovered from when broken.

A power cut can come at any moment on a Pi; the file is either the old state or the new one, never half.
"""

from __future__ import annotations

import json
import math
import os

from dreadpi import modes
from dreadpi.errors import PROBLEMS
from dreadpi.policy import Override

FILENAME = "state.json"
FORMAT = 1


def write_atomic(path: str, text: str, mode: int = 0o600, durable: bool = True) -> None:
    """Write, fsync, rename over `path`, fsync the directory: readers see the old or the new file, whole.

    `durable=False` skips the fsyncs, for files that stand in for volatile things (simulated pins): still
    never half-written, just not guaranteed to survive a power cut, as real pin levels do not either.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:  # left by a process with our pid that died mid-write: ours to replace
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # the umask must not decide who can read it
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# Every field of the state file and its default; `extra` and the lists are copied, never shared.
_DEFAULTS = {
    "mode": None,  # str | None
    "since": 0.0,  # when this mode was first asserted
    "relays": None,  # list: energised pattern as driven, relay 1 first
    "pin_levels": None,  # list: electrical levels as driven
    "boot_id": "",  # the kernel's boot id when they were driven: after a reboot the pins are inputs again
    "watts": None,  # float | None
    "reading_at": None,  # float | None
    "source": "",
    "extra": None,  # dict of optional figures, such as consumption
    "reason": "",
    "failsafe": False,
    "manual": False,
    "updated_at": 0.0,
    "override": None,  # {"mode": ..., "until": ...} | None
    # Health (dreadpi.health): kept across cycles and reboots.
    "consecutive_failsafe": 0,
    "failing_since": None,  # float | None: when the current run of failures began
    "last_good_reading_at": None,  # float | None
    "problem": None,  # one of errors.PROBLEMS | None
    "switches_total": 0,  # relay changes ever
    "credential_expires_at": None,  # float | None
    "credential_warned_at": None,  # float | None
    # Notifications (dreadpi.reports.notify): the problem a failure notification was delivered for, until a
    # recovery is notified; "relay" after a relay error. None: nothing outstanding.
    "notified_problem": None,  # one of errors.PROBLEMS | None
    # MQTT (dreadpi.reports.mqtt, dreadpi.mqtt_listen): why publishing last failed, already in the error log, so a
    # broker that stays down is logged once; and the last command applied from Home Assistant (its `at`, and what
    # it asked), so a re-delivered or replayed command is never applied twice.
    "mqtt_problem": None,  # str | None
    "mqtt_command_at": None,  # float | None
    "mqtt_command": None,  # str | None
    # The surplus basis (dreadpi.surplus): the learned AC memory, and whether the error log was told that readings
    # without consumption are being judged on generation (told once, until consumption comes back).
    "ac_learned": None,  # dict | None
    "surplus_warned": False,
    "format": FORMAT,
}


class State:
    """The state file's contents. A plain class: dataclasses cost a Pi Zero too much start-up time."""

    __slots__ = tuple(_DEFAULTS)

    def __init__(self, **values: object) -> None:
        unknown = set(values) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown state fields: {', '.join(sorted(unknown))}")
        for name, default in _DEFAULTS.items():
            setattr(self, name, values.get(name, default))
        if self.extra is None:
            self.extra = {}

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _DEFAULTS}

    def active_override(self, now: float) -> Override | None:
        if not self.override:
            return None
        found = Override(self.override["mode"], float(self.override["until"]))
        return found if found.active(now) else None


def _number(value: object, allow_none: bool = True) -> bool:
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid(raw: dict) -> bool:
    if raw.get("mode") is not None and raw["mode"] not in modes.ALL:
        return False
    if not (_number(raw.get("since"), False) and _number(raw.get("watts")) and _number(raw.get("reading_at"))):
        return False
    if not all(_number(raw.get(key)) for key in ("failing_since", "last_good_reading_at", "credential_expires_at",
                                                 "credential_warned_at")):
        return False
    counts = (raw.get("consecutive_failsafe", 0), raw.get("switches_total", 0))
    if not all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts):
        return False
    if any(raw.get(key) is not None and raw[key] not in PROBLEMS for key in ("problem", "notified_problem")):
        return False
    override = raw.get("override")
    if override is not None:
        if not isinstance(override, dict) or override.get("mode") not in modes.ALL:
            return False
        if not _number(override.get("until"), False):
            return False
    for key in ("relays", "pin_levels"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, list) and all(v in (0, 1) for v in value)):
            return False
    if raw.get("ac_learned") is not None and not isinstance(raw["ac_learned"], dict):
        return False
    if not all(isinstance(raw.get(key, False), bool) for key in ("failsafe", "manual", "surplus_warned")):
        return False
    if not all(isinstance(raw.get(key, ""), str) for key in ("reason", "source", "boot_id")):
        return False
    if not all(raw.get(key) is None or isinstance(raw[key], str) for key in ("mqtt_problem", "mqtt_command")):
        return False
    if not _number(raw.get("mqtt_command_at")):
        return False
    return isinstance(raw.get("extra", {}), dict)


def load(state_dir: str, recover: bool = True) -> tuple:
    """(state, problem): a missing file is a first run; a corrupt one is set aside and reported.

    Only a cycle holding the lock may `recover` (move a corrupt file aside); readers such as status just report.
    """
    path = os.path.join(state_dir, FILENAME)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return State(), None
    except (OSError, ValueError) as err:
        why = f"unreadable ({err.__class__.__name__})"
    else:
        if isinstance(raw, dict) and _valid(raw):
            return State(**{key: raw[key] for key in _DEFAULTS if key in raw}), None
        why = "not a dreadpi state"
    if recover:
        return State(), _set_aside(path, why)
    return State(), f"state file {path} is {why}; the next cycle will start afresh"


def _set_aside(path: str, why: str) -> str:
    try:
        os.replace(path, path + ".corrupt")
        kept = f"; kept as {path}.corrupt"
    except OSError:
        kept = ""
    return f"state file {path} was {why}{kept}; starting afresh"


def save(state_dir: str, state: State) -> None:
    write_atomic(os.path.join(state_dir, FILENAME), json.dumps(state.to_dict(), sort_keys=True, indent=1) + "\n",
                 0o644)
