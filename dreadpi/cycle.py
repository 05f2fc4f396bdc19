"""One control cycle: lock, collect, decide, drive, record. The only module that knows all the parts."""

from __future__ import annotations

import os
import time

from dreadpi import clock, collectors, hardware, health, lock, logs, sandbox
from dreadpi import state as state_store
from dreadpi.config import Config
from dreadpi.errors import EXIT_FAILSAFE, EXIT_OK, CollectorError, RelayError
from dreadpi.policy import Decision, Previous, decide
from dreadpi.reading import Reading
from dreadpi.relays import open_relays


class Outcome:
    """What a cycle did: the decision, the reading it rested on, the state saved, and warnings for people."""

    def __init__(self, decision: Decision, reading: Reading | None, state: state_store.State, when: clock.Instant,
                 notes: list, collector_seconds: float = 0.0, credential_warning: str | None = None) -> None:
        self.decision = decision
        self.reading = reading
        self.state = state
        self.when = when
        self.notes = notes
        self.collector_seconds = collector_seconds
        self.credential_warning = credential_warning  # the sentence health.credential_warning gave this cycle

    @property
    def exit_code(self) -> int:
        return EXIT_FAILSAFE if self.decision.failsafe else EXIT_OK

    @property
    def line(self) -> str:
        d = self.decision
        return f"{clock.human(self.when)} {d.mode} ({d.percent}%): {d.reason}"


def collect(config: Config, now: float) -> tuple:
    """(reading, identity or None, notes) from the configured source, run in the sandbox unless the collector
    already holds a usable reading; CollectorError names the source and never carries a secret."""
    source = config.collector.source
    ctx = collectors.Context(settings=config.collector.settings, state_dir=config.state_dir, now=now,
                             max_age=config.policy.max_age, timeout=config.collector.timeout, notes=[], secrets=[])
    who = None
    try:
        collector = collectors.get(source)
        ctx.secrets.extend(str(config.collector.settings.get(key) or "") for key in collector.secret_keys)
        step = collector.plan(ctx)
        if isinstance(step, Reading):
            reading = step
        else:
            who = sandbox.identity(config.collector.user, config.collector.group)
            limits = sandbox.Limits(timeout=config.collector.timeout, memory_mb=config.collector.memory_limit)
            result = sandbox.run(step.argv, step.stdin, who, limits)
            failure = sandbox.describe_exit(result)
            if failure:
                raise CollectorError(failure)
            reading = collector.parse(result.stdout, ctx)
        problem = reading.problem(config.collector.max_watts)
        if problem:
            raise CollectorError(f"invalid reading: {problem}")
    except CollectorError as err:
        raise CollectorError(collectors.redact(f"{source}: {err}", ctx.secrets), err.problem) from None
    finally:
        ctx.notes[:] = [collectors.redact(f"{source}: {note}", ctx.secrets) for note in ctx.notes]
    return reading, who, ctx.notes

def prepare_dirs(config: Config) -> None:
    for directory in (config.state_dir, config.log_dir):
        os.makedirs(directory, mode=0o755, exist_ok=True)


def run(config: Config, lock_wait: float = 0.0) -> Outcome:
    """Run one cycle. Raises LockedError (nothing touched) or RelayError (pins could not be driven)."""
    prepare_dirs(config)
    with lock.held(config.state_dir, wait=lock_wait):
        return _locked_cycle(config)


def _locked_cycle(config: Config) -> Outcome:
    patterns = config.relays.patterns
    saved, problem = state_store.load(config.state_dir)
    notes = [problem] if problem else []

    reading: Reading | None = None
    failure: CollectorError | None = None
    started = time.monotonic()
    try:
        reading, who, collector_notes = collect(config, time.time())
        notes.extend(collector_notes)
        if who is not None and not who.dropped:
            notes.append(f"not running as root: the collector ran as {who.name}, without the sandbox user")
    except CollectorError as err:
        failure = err
    collector_seconds = time.monotonic() - started

    now = clock.now()
    epoch = now.epoch
    learned = saved.ac_learned if isinstance(saved.ac_learned, dict) else None
    previous = Previous(saved.mode, saved.since, saved.manual, learned) if saved.mode in patterns else Previous()
    override = saved.active_override(epoch)
    if override is not None and override.mode not in patterns:
        notes.append(f"override to {override.mode} ignored: relays.{override.mode} is not configured")
        override = None
    decision = decide(reading, previous, now, config.policy, failure=str(failure) if failure else None,
                      override=override, max_watts=config.collector.max_watts)
    pattern = patterns[decision.mode]
    # A failsafe without a collector failure is a reading the policy refused: stale or from the future.
    problem_class = failure.problem if failure else ("stale" if decision.failsafe else None)
    expires_at, credential, renew = _credential(config)

    boot = hardware.boot_id()
    try:
        board, relay_note = open_relays(config.relays, config.state_dir)
        if relay_note:
            notes.append(relay_note)
        # Levels a backend cannot read without disturbing a pin are the ones this dreadpi drove since this boot.
        trusted = tuple(saved.pin_levels) if saved.pin_levels and saved.boot_id == boot else None
        current = board.current(trusted)
        readback = board.pattern(current)
        if saved.relays is not None and readback != tuple(saved.relays):
            shown = " ".join(map(str, readback)) if readback else "not driven"
            notes.append(f"relays read back as {shown}, not {' '.join(map(str, saved.relays))} as last driven "
                         f"(a reboot?); re-driving")
        levels = board.drive(pattern, current)
    except RelayError as err:
        logs.error(config.log_dir, now, f"error: {err}; wanted {decision.mode}: {decision.reason}")
        # The relays are as they were; only the health learns of it, so status and the metrics show why.
        failed = state_store.State(**saved.to_dict())
        for key, value in health.after_cycle(saved, decision.failsafe, "relay", None, epoch, 0, expires_at).items():
            setattr(failed, key, value)
        failed.updated_at = epoch
        state_store.save(config.state_dir, failed)
        _report(config, saved, Outcome(decision, reading, failed, now, notes, collector_seconds), relay_error=str(err))
        raise

    warned = saved.surplus_warned
    if decision.fallback and not warned:
        notes.append("policy.basis is surplus but the reading has no consumption: deciding on generation until "
                     "consumption comes back (is the consumption meter fitted and reporting?)")
        warned = True
    elif warned and reading is not None and reading.extra and (
            "consumption_watts" in reading.extra or "net_watts" in reading.extra):
        warned = False  # consumption is back: a later loss is worth a line again
    fields = health.after_cycle(saved, decision.failsafe, problem_class, reading.at if reading else None, epoch,
                                health.switches(readback, pattern), expires_at)
    warning = health.credential_warning(fields, epoch, credential, renew)
    if warning:
        notes.append(warning)
    new = state_store.State(
        mode=decision.mode,
        since=saved.since if decision.mode == saved.mode and saved.since else epoch,
        relays=list(pattern),
        pin_levels=list(levels),
        boot_id=boot,
        watts=reading.watts if reading else None,
        reading_at=reading.at if reading else None,
        source=config.collector.source,
        extra=dict(reading.extra or {}) if reading else {},
        reason=decision.reason,
        failsafe=decision.failsafe,
        manual=decision.manual,
        updated_at=epoch,
        override=saved.override if override is not None else None,
        notified_problem=saved.notified_problem,
        mqtt_problem=saved.mqtt_problem,
        mqtt_command_at=saved.mqtt_command_at,
        mqtt_command=saved.mqtt_command,
        ac_learned=decision.learned if decision.learned is not None else saved.ac_learned,
        surplus_warned=warned,
        **fields,
    )
    state_store.save(config.state_dir, new)
    logs.plot(config.log_dir, now, new.watts, decision.mode, decision.percent, new.extra)
    for note in notes:
        logs.error(config.log_dir, now, f"warning: {note}")
    if failure:
        logs.error(config.log_dir, now, f"error: {failure}; asserted {decision.mode}")
    elif decision.failsafe:  # a refused reading: the README promises every failsafe's reason here
        logs.error(config.log_dir, now, f"error: {decision.reason}")
    outcome = Outcome(decision, reading, new, now, notes, collector_seconds, warning)
    _report(config, saved, outcome)
    return outcome


def _credential(config: Config) -> tuple:
    """(expiry or None, what expires, how to renew it) for the configured collector, known locally."""
    collector = collectors.get(config.collector.source)
    known = getattr(collector, "credential_expiry", None)
    if known is None:
        return None, "", ""
    return known(config.collector.settings, config.state_dir)


def _report(config: Config, saved: state_store.State, outcome: Outcome, relay_error: str | None = None) -> None:
    """What the cycle decided, to whoever is configured to hear it. A report can neither change the decision
    nor the relays, nor fail the cycle: its problems become warnings in the error log. `saved` is the state
    before the cycle; `relay_error` says why the relays could not be driven."""
    if config.metrics.textfile_dir:
        from dreadpi.reports import metrics

        try:
            metrics.write(config, outcome, relay_error is None)
        except OSError as err:
            logs.error(config.log_dir, outcome.when, f"warning: metrics not written to "
                                                     f"{config.metrics.textfile_dir}: {err.strerror or err}")
    if config.notify.urls:
        _notify(config, saved, outcome, relay_error)
    if config.mqtt.host:
        _mqtt(config, outcome)


def _notify(config: Config, saved: state_store.State, outcome: Outcome, relay_error: str | None) -> None:
    """Tell the household about a transition (most cycles have none, and start nothing); remember in the state
    what it was told, so that it is told once."""
    from dreadpi.reports import notify

    notice = notify.plan(saved, outcome, config.notify.after, relay_error, os.uname().nodename)
    if notice is None:
        return
    delivered, warnings = notify.deliver(config, notice)
    for warning in warnings:
        logs.error(config.log_dir, outcome.when, f"warning: {warning}")
    remembered = notice.notified if delivered else notice.unsent
    if remembered != outcome.state.notified_problem:
        outcome.state.notified_problem = remembered
        try:
            state_store.save(config.state_dir, outcome.state)
        except OSError as err:
            logs.error(config.log_dir, outcome.when, f"warning: what was notified is not saved: {err.strerror or err}")


def _mqtt(config: Config, outcome: Outcome) -> None:
    """Publish the state and Home Assistant's discovery configs, retained, every cycle: through the MQTT service
    where it runs (a signal; it publishes on its open connection and logs its own broker problems), else from a
    sandboxed child of this cycle. A broker that is down, refuses the password or hangs is one warning in the
    error log until it works again (the state remembers it was logged), never a change to the relays or the
    exit code."""
    from dreadpi.reports import mqtt

    state = outcome.state
    if mqtt.hand_off(config):
        if state.mqtt_problem is not None:  # the service reports the broker from now on
            state.mqtt_problem = None
            _save_quietly(config, outcome, state)
        return
    failure = mqtt.deliver(config, mqtt.messages(config, state, outcome.when.epoch, os.uname().nodename))
    if failure == state.mqtt_problem:
        return
    if failure is None:
        logs.error(config.log_dir, outcome.when, "warning: mqtt: publishing to the broker works again")
    elif state.mqtt_problem is None:
        logs.error(config.log_dir, outcome.when, f"warning: mqtt: state not published: {failure}; logged once "
                                                 f"until it works again")
    state.mqtt_problem = failure
    _save_quietly(config, outcome, state)


def _save_quietly(config: Config, outcome: Outcome, state: state_store.State) -> None:
    """Save what a report remembers; a failure is a warning, as a report never fails the cycle."""
    try:
        state_store.save(config.state_dir, state)
    except OSError as err:
        logs.error(config.log_dir, outcome.when, f"warning: the MQTT outcome is not saved: {err.strerror or err}")
