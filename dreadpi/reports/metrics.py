"""The cycle as Prometheus metrics, in a file for node_exporter's textfile collector.

Written whole and renamed into place in the same directory, so a scrape sees the last cycle or this one, never
half of one (node_exporter reads only `*.prom`, so the temporary file is never read). Names follow Prometheus
conventions: base units, `_seconds`, `_total` for the counter, `_info` for labels that describe. Nothing here
imports more than the cycle already has.
"""

from __future__ import annotations

import os

from dreadpi import __version__, modes, pull
from dreadpi.errors import PROBLEMS
from dreadpi.state import write_atomic

FILENAME = "dreadpi.prom"


def _gauge(lines: list, name: str, help_text: str, samples: list, kind: str = "gauge") -> None:
    """HELP, TYPE and the samples (label text, value); a metric with no sample is left out entirely."""
    if not samples:
        return
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {_number(value)}")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def _in_active_hours(config, outcome) -> bool:  # noqa: ANN001
    hours = config.policy.active_hours
    return hours is None or hours.contains(outcome.when.minute_of_day())


def render(config, outcome, relays_driven: bool = True) -> str:  # noqa: ANN001 (Config, cycle.Outcome)
    state, decision = outcome.state, outcome.decision
    epoch = outcome.when.epoch
    mode = decision.mode if relays_driven else state.mode
    lines: list = []
    _gauge(lines, "dreadpi_info", "The dreadpi version that ran the last cycle.", [(f'{{version="{__version__}"}}', 1)])
    _gauge(lines, "dreadpi_mode", "1 for the demand response mode asserted, 0 for the others the board has.",
           [(f'{{mode="{name}"}}', int(name == mode)) for name in modes.ORDER if name in config.relays.patterns])
    if mode:
        _gauge(lines, "dreadpi_permitted_ratio", "Share of its rated input the air conditioner may use (1 = normal).",
               [("", modes.PERCENT[mode] / 100)])
    if outcome.reading is not None:
        _gauge(lines, "dreadpi_generation_watts", "Solar generation in the last reading.",
               [("", outcome.reading.watts)])
        _gauge(lines, "dreadpi_reading_age_seconds", "Age of the last reading when the cycle ran.",
               [("", round(max(0.0, epoch - outcome.reading.at), 3))])
    _gauge(lines, "dreadpi_failsafe", "1 when the failsafe mode is applied for want of a usable reading.",
           [("", int(decision.failsafe))])
    _gauge(lines, "dreadpi_consecutive_failsafe_cycles", "Failsafe cycles in a row.",
           [("", state.consecutive_failsafe)])
    _gauge(lines, "dreadpi_problem", "1 for the class of the current problem, 0 for the others; all 0 when healthy.",
           [(f'{{problem="{name}"}}', int(name == state.problem)) for name in PROBLEMS])
    _gauge(lines, "dreadpi_control_active", "1 when the cycle ran inside policy.active_hours, when control matters.",
           [("", int(_in_active_hours(config, outcome)))])
    _gauge(lines, "dreadpi_last_cycle_timestamp_seconds", "When the last cycle ran.", [("", round(epoch, 3))])
    if config.metrics.schedule:
        from dreadpi.cron import Schedule

        schedule = Schedule(config.metrics.schedule)
        following = schedule.next_after(epoch)
        if following is not None:
            _gauge(lines, "dreadpi_next_cycle_timestamp_seconds", "When cron starts the next cycle.",
                   [("", following)])
        _gauge(lines, "dreadpi_cycle_interval_seconds", "The schedule's usual interval between cycles.",
               [("", schedule.interval())])
    if state.last_good_reading_at is not None:
        _gauge(lines, "dreadpi_last_good_reading_timestamp_seconds", "When the last usable reading was measured.",
               [("", round(state.last_good_reading_at, 3))])
    _gauge(lines, "dreadpi_relay_switches_total", "Relay changes ever made (kept across reboots).",
           [("", state.switches_total)], kind="counter")
    if state.credential_expires_at is not None:
        _gauge(lines, "dreadpi_credential_expiry_timestamp_seconds", "When the collector's credential expires.",
               [("", state.credential_expires_at)])
    _gauge(lines, "dreadpi_collector_duration_seconds", "How long the collector took in the last cycle.",
           [("", round(outcome.collector_seconds, 3))])
    last_pull = pull.load(config.state_dir)  # pull mode only
    if last_pull is not None:
        _gauge(lines, "dreadpi_pull_ok", "1 when the last pull (pull mode) applied its commit, 0 if refused or failed.",
               [("", int(last_pull.get("outcome") == "ok"))])
        for name, help_text, when in (
                ("dreadpi_pull_timestamp_seconds", "When the last pull ran.", last_pull.get("time")),
                ("dreadpi_pull_last_ok_timestamp_seconds", "When the last pull that applied its commit ran.",
                 (last_pull.get("last_ok") or {}).get("time"))):
            if pull.epoch(when) is not None:
                _gauge(lines, name, help_text, [("", pull.epoch(when))])
    return "\n".join(lines) + "\n"


def write(config, outcome, relays_driven: bool = True) -> None:  # noqa: ANN001
    directory = config.metrics.textfile_dir
    os.makedirs(directory, mode=0o755, exist_ok=True)
    write_atomic(os.path.join(directory, FILENAME), render(config, outcome, relays_driven), 0o644, durable=False)
