"""The two logs: an error log for people and a plot log for machines. Plain appends; logrotate rotates."""

from __future__ import annotations

import os

from dreadpi.clock import Instant, iso

ERROR_LOG = "error.log"
PLOT_LOG = "plot.log"


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def error(log_dir: str, when: Instant, message: str) -> None:
    _append(os.path.join(log_dir, ERROR_LOG), f"{iso(when)} {message}\n")


def plot(log_dir: str, when: Instant, watts: float | None, mode: str, percent: int,
         extra: dict | None = None) -> None:
    """One CSV line a cycle: time, watts (empty when unknown), mode, percent[, consumption, net]."""
    fields = [iso(when), "" if watts is None else f"{watts:.0f}", mode, str(percent)]
    extra = extra or {}
    if "consumption_watts" in extra or "net_watts" in extra:
        fields += [_watts(extra.get("consumption_watts")), _watts(extra.get("net_watts"))]
    _append(os.path.join(log_dir, PLOT_LOG), ",".join(fields) + "\n")


def _watts(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else ""
