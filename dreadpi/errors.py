"""Exceptions that carry a message meant for the person running dreadpi, plus the exit codes.

Every failure a user can cause or fix is one of these; anything else is a bug and surfaces as a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_FAILSAFE = 4
EXIT_RELAYS = 5
EXIT_USAGE = 64


class DreadpiError(Exception):
    """Base class: `str(err)` is a complete sentence for the user; `exit_code` is what the command returns."""

    exit_code = EXIT_INTERNAL


class ConfigError(DreadpiError):
    """The configuration is unusable; `problems` lists every `section.key: problem` found, not just the first."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.problems))


class LockedError(DreadpiError):
    """Another cycle holds the lock; the caller must touch nothing."""

    exit_code = EXIT_LOCKED


# Why a cycle could not do its job, in a small fixed set a person (or an alert rule) can act on.
PROBLEMS = ("auth", "quota", "unreachable", "bad-answer", "stale", "relay", "config")


class CollectorError(DreadpiError):
    """Getting a reading failed; the cycle answers it with the failsafe, so the message becomes the reason.
    `problem` is its class in PROBLEMS."""

    def __init__(self, message: str, problem: str = "bad-answer") -> None:
        super().__init__(message)
        self.problem = problem if problem in PROBLEMS else "bad-answer"


class RelayError(DreadpiError):
    """The relay backend could not drive or read the pins."""

    exit_code = EXIT_RELAYS


class UsageError(DreadpiError):
    """A command-line argument is wrong."""

    exit_code = EXIT_USAGE
