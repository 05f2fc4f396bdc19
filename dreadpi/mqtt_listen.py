"""`dreadpi mqtt-listen`: the MQTT service. It publishes each cycle's state on one open connection, and (with
`mqtt.commands`) lets Home Assistant's select set or end an override, within seconds.

Two processes, split by privilege. The network side is a long-running child in the collector sandbox
(sandbox.spawn: the unprivileged user, limits, no environment) running fetch_mqtt's `listen`: it holds the
broker connection, publishes what this side writes to its stdin, and passes on only commands of the right
shape, as {"mode", "for", "at"}.

Publishing: while the service runs, its pid is in the state directory (reports.mqtt.announce), and a cycle,
instead of starting a publishing child of its own, sends it SIGUSR1 (reports.mqtt.hand_off). This side then
reads the saved state and hands the child the state document, and the discovery configs this connection has
not yet published. On a Pi Zero that is the difference between a cycle that starts a second interpreter,
imports paho and makes a TLS handshake every few minutes, and one that sends a signal.

Commands: this root side trusts nothing the child passes on: it re-validates every field against its own
config (a mode the board can assert, a duration within the override limit, a time no more than MAX_AGE old and
at most MAX_SKEW ahead), then applies it through the same code path as `dreadpi override` (override.apply:
under the cycle's lock, then a cycle, which republishes the state). A command whose `at` is older than the
last one applied, or the same command again, is not applied twice (state.mqtt_command_at / mqtt_command).
Anything refused is logged with the reason, never the command itself. Who may send commands at all is the
broker's ACL: only Home Assistant's user may write the command topic.

The child reconnects by itself; if it dies, this side starts another after a pause. A broker problem is logged
once (error.log and stderr) until the connection works again.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import time

from dreadpi import logs
from dreadpi.clock import now as clock_now
from dreadpi.errors import EXIT_CONFIG, EXIT_OK, DreadpiError, UsageError

MAX_AGE = 300.0  # seconds: an older command was queued, retained or replayed; a person asked minutes ago at most
MAX_SKEW = 30.0  # seconds a command may be dated ahead of this Pi's clock (Home Assistant's clock differs a little)
MAX_LINE = 4096  # bytes of one line from the child; more is a broken child
RESTART_PAUSE = 10.0  # seconds before a child that died is replaced


class Refused(DreadpiError):
    """A command that is not applied; the message is the reason, never the command."""


class Stop(BaseException):
    """SIGTERM: systemd stops the service."""


def validate(cfg, request: object, now: float) -> tuple:  # noqa: ANN001 (Config)
    """(override for the state or None to clear it, the command's `at`, its key) from what the child passed
    on; Refused says why not. The duplicate check needs the saved state: `accept`."""
    if not isinstance(request, dict) or set(request) != {"event", "mode", "for", "at"}:
        raise Refused("not a command")
    at, mode, duration = request["at"], request["mode"], request["for"]
    if isinstance(at, bool) or not isinstance(at, int):
        raise Refused("no valid time (at)")
    if at < now - MAX_AGE:
        raise Refused(f"stale: sent {now - at:.0f} s ago (at most {MAX_AGE:g})")
    if at > now + MAX_SKEW:
        raise Refused(f"dated {at - now:.0f} s in the future (at most {MAX_SKEW:g}; check the clocks)")
    if not isinstance(mode, str) or not (duration is None or isinstance(duration, str)):
        raise Refused("not a command")
    from dreadpi import override

    try:
        wanted = override.requested(cfg, mode, duration, now)
    except UsageError as err:
        raise Refused(_without_value(str(err))) from None
    return wanted, at, f"{mode} {duration or ''}".strip()


def _without_value(message: str) -> str:
    """A UsageError's sentence without the value it quotes (which came from the network)."""
    return message.split(", got ")[0]


def accept(at: int, key: str):  # noqa: ANN201
    """The check override.apply runs under the lock: not older than, nor the same as, the last command applied;
    and then records this one."""

    def check(saved) -> None:  # noqa: ANN001 (state.State)
        last = saved.mqtt_command_at
        if last is not None and (at < last or (at == last and key == saved.mqtt_command)):
            raise Refused("already applied, or older than the last command applied")
        saved.mqtt_command_at, saved.mqtt_command = float(at), key

    return check


def handle(cfg, request: object) -> str:  # noqa: ANN001 (Config)
    """Apply one command from the child; a line for the log either way."""
    from dreadpi import override

    try:
        wanted, at, key = validate(cfg, request, time.time())
        outcome = override.apply(cfg, wanted, accept(at, key))
    except Refused as err:
        line = f"warning: mqtt: command refused: {err}"
        logs.error(cfg.log_dir, clock_now(), line)
        return line
    except DreadpiError as err:  # the lock held too long, relays that cannot be driven: not the sender's fault
        line = f"error: mqtt: command not applied: {err}"
        logs.error(cfg.log_dir, clock_now(), line)
        return line
    return f"mqtt: applied {key} from Home Assistant: {outcome.line}"


class Service:
    """The service's root side: what the log already says about the broker (a problem is logged once, and its
    end once), whether a SIGTERM must wait for a command being applied (a cycle is never cut short), and what
    the child's connection has published: `published` {topic: payload} acknowledged, `sending` the list the
    child has now, `stale` whether the saved state is newer than what was sent."""

    def __init__(self, cfg, log) -> None:  # noqa: ANN001 (Config, callable)
        self.cfg, self.log = cfg, log
        self.problem: str | None = None
        self.busy = False
        self.stopping = False
        self.connected = False
        self.published: dict = {}
        self.sending: list | None = None
        self.stale = True  # publish the saved state as soon as the child is connected

    def wake(self, signum: int, frame: object) -> None:
        """SIGUSR1 from a cycle (reports.mqtt.hand_off): the saved state changed. The wake-up fd ends the poll."""
        self.stale = True

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM: stop now, or as soon as the command being applied is."""
        self.stopping = True
        if not self.busy:
            raise Stop

    def connection(self, event: dict) -> None:
        if event.get("event") == "connected":
            if self.problem is not None:
                self._say("warning: mqtt: the listener is connected to the broker again")
            elif self.cfg.mqtt.commands:
                self.log(f"mqtt: publishing to and listening on {self.cfg.mqtt.topic_prefix}")
            else:
                self.log(f"mqtt: publishing to {self.cfg.mqtt.topic_prefix}")
            self.problem = None
            self.connected, self.published, self.sending, self.stale = True, {}, None, True
            self._record()
            return
        self.connected = False
        why = str(event.get("why"))[:200]
        if self.problem is None:  # the first reason is the telling one (a refusal, then a closed connection)
            self._say(f"warning: mqtt: the listener cannot reach mqtt.host {self.cfg.mqtt.host} port "
                      f"{self.cfg.mqtt.port}: {why}; logged once until it works again")
            self.problem = why
            self._record()

    def _record(self) -> None:
        """The connection's state for `dreadpi status` (reports.mqtt.service), when it changes."""
        from dreadpi.reports import mqtt
        from dreadpi.reports.notify import redact, secrets

        problem = redact(self.problem, secrets(self.cfg)) if self.problem else None
        try:
            mqtt.announce(self.cfg.state_dir, self.connected, problem)
        except OSError as err:
            self.log(f"mqtt-listen: cannot record the connection in {self.cfg.state_dir}: {err.strerror or err}")

    def _say(self, line: str) -> None:
        from dreadpi.reports.notify import redact, secrets

        line = redact(line, secrets(self.cfg))
        logs.error(self.cfg.log_dir, clock_now(), line)
        self.log(line)

    def publish(self, child) -> None:  # noqa: ANN001 (sandbox.Child)
        """Hand the child the saved state, and the discovery configs this connection has not published, once
        the last list is acknowledged. A state that cannot be read is left for the next cycle's."""
        if not (self.stale and self.connected and self.sending is None):
            return
        from dreadpi import state as state_store
        from dreadpi.reports import mqtt

        self.stale = False
        try:
            saved, _ = state_store.load(self.cfg.state_dir, recover=False)
        except (OSError, DreadpiError):
            return
        if not saved.updated_at:
            return  # no cycle has run yet: nothing to show
        wanted = mqtt.messages(self.cfg, saved, time.time(), os.uname().nodename)
        self.sending = [message for message in wanted if self.published.get(message[0]) != message[1]] or None
        if self.sending is None:
            return
        try:
            os.write(child.stdin, json.dumps(self.sending).encode("utf-8") + b"\n")
        except BlockingIOError:  # the child has not read what it was sent before: try again at the next wake
            self.sending, self.stale = None, True
        except OSError:
            self.sending = None  # it exited; follow() sees that next

    def follow(self, child, wakeup: int) -> None:  # noqa: ANN001 (sandbox.Child)
        """Read the child's events until it exits (or prints something no child of ours would); publish the
        state whenever a cycle says it changed."""
        os.set_blocking(child.stdin, False)
        poller = select.poll()
        poller.register(child.stdout, select.POLLIN)
        poller.register(child.stderr, select.POLLIN)
        poller.register(wakeup, select.POLLIN)
        pending = b""
        while True:
            self.publish(child)
            for fd, _ in poller.poll():
                if fd == wakeup:
                    while _drained(wakeup):
                        pass
                    continue
                chunk = os.read(fd, 65536)
                if fd == child.stderr:
                    if not chunk:
                        poller.unregister(fd)
                    continue  # paho's or Python's own complaints: not ours to log, may quote anything
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.event(line)
                if len(pending) > MAX_LINE:
                    self.log("mqtt-listen: the listening child printed an over-long line; restarting it")
                    return

    def event(self, line: bytes) -> None:
        try:
            event = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            event = None
        kind = event.get("event") if isinstance(event, dict) else None
        if kind in ("connected", "error"):
            self.connection(event)
        elif kind == "published" and self.sending is not None:
            self.published.update((topic, payload) for topic, payload, _ in self.sending)
            self.sending = None
        elif kind == "unpublished":
            self.sending, self.stale = None, True  # sent again once connected
        elif kind == "command" and self.cfg.mqtt.commands:
            self.busy = True
            try:
                self.log(handle(self.cfg, event))
            finally:
                self.busy = False
            if self.stopping:
                raise Stop
        else:
            why = str(event.get("why"))[:100] if kind == "refused" else "not an event"
            if not re.fullmatch(r"[A-Za-z0-9 (),.'?_-]+", why):
                why = "not a command"  # the child's phrases are fixed; anything else is not repeated
            line_out = f"warning: mqtt: command refused: {why}"
            logs.error(self.cfg.log_dir, clock_now(), line_out)
            self.log(line_out)


def serve(cfg, log, python: str | None = None) -> int:  # noqa: ANN001 (Config, callable)
    """Run until SIGTERM: keep a listening child, apply what it passes on. `python` is for tests (another
    interpreter and paho); a Pi uses Debian's."""
    from dreadpi import cycle, sandbox
    from dreadpi.reports import mqtt

    if not cfg.mqtt.host:
        log("mqtt-listen: mqtt.host is empty, so there is nothing to listen to; set [mqtt] first")
        return EXIT_CONFIG
    cycle.prepare_dirs(cfg)
    service = Service(cfg, log)
    signal.signal(signal.SIGTERM, service.stop)
    wakeup, wakeup_w = os.pipe()
    for fd in (wakeup, wakeup_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(mqtt.WAKE, service.wake)
    argv, stdin = mqtt.invocation(mqtt.job(cfg, os.uname().nodename, "listen"), "listen", python or mqtt.PYTHON)
    try:
        service._record()
        while True:
            who = sandbox.identity(cfg.collector.user, cfg.collector.group)
            child = sandbox.spawn(argv, stdin, who, cfg.collector.memory_limit)
            try:
                service.follow(child, wakeup)
            finally:
                code = child.stop()
            service.connection({"event": "error", "why": f"the listening child ended (exit {code})"})
            time.sleep(RESTART_PAUSE)
    except Stop:
        return EXIT_OK
    finally:
        mqtt.withdraw(cfg.state_dir)


def _drained(fd: int) -> bool:
    """Read what the signal handlers wrote to the wake-up pipe; False once it is empty."""
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False
