"""Home Assistant over MQTT: what dreadpi publishes (its state and MQTT discovery configs, retained), where, and
how it gets there.

Everything here but `deliver` is pure and cheap: a cycle builds a handful of small JSON documents. `deliver`
sends them from the collector sandbox, as the unprivileged user, within `mqtt.timeout`, under Debian's
`/usr/bin/python3 -I` with Debian's python3-paho-mqtt (fetch_mqtt.py): the broker's password travels on stdin,
never in argv, and the parent never imports paho or ssl. The listener (dreadpi.mqtt_listen) starts the same
child source in its long-running form.

Home Assistant sees one device per Pi. Every entity that shows state reads one retained JSON document
(`<topic_prefix>/state`) and carries `expire_after` of two schedule intervals, so when cycles stop Home Assistant
marks them unavailable. The override `select` sends JSON with a timestamp (`COMMAND_TEMPLATE`) to
`<topic_prefix>/command`, and is available only while the listener is connected (`<topic_prefix>/listener`,
online/offline, offline set as the listener's last will).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

from dreadpi import __version__

PYTHON = "/usr/bin/python3"  # Debian's, with Debian's python3-paho-mqtt; the role installs both
HEADROOM = 2.0  # seconds the child's own deadline leaves before the sandbox's kill, so it can say why
DEFAULT_INTERVAL = 900.0  # the role's default cron schedule (*/15) when [metrics] schedule is not given
_BOOT = ("import json,sys\ng={'__name__':'fetch_mqtt'}\n"
         "exec(compile(json.loads(sys.stdin.readline()),'fetch_mqtt.py','exec'),g)\ng[sys.argv[1]]()\n")

# The override select: its options, and the (mode, duration) each asks for; "clear" ends an override.
CONTROL = (("automatic", "clear", None), ("normal for 1 h", "drm0", "1h"), ("normal for 2 h", "drm0", "2h"),
           ("normal for 4 h", "drm0", "4h"))
# Home Assistant's select publishes the bare option; this makes it send JSON with the time it was chosen, so a
# re-delivered or replayed command can be told from a new one.
COMMAND_TEMPLATE = '{"option": "{{ value }}", "at": {{ as_timestamp(now()) | int }}}'
ONLINE, OFFLINE = "online", "offline"


def node_id(host: str) -> str:
    """The device's id in discovery topics and unique ids: `dreadpi_<host>`, only [a-zA-Z0-9_-]."""
    return "dreadpi_" + (re.sub(r"[^A-Za-z0-9_-]", "_", host) or "pi")


def topics(settings) -> tuple:  # noqa: ANN001 (config.MqttSettings)
    """(state, command, listener availability) topics under `mqtt.topic_prefix`."""
    prefix = settings.topic_prefix
    return f"{prefix}/state", f"{prefix}/command", f"{prefix}/listener"


def expire_after(config) -> int:  # noqa: ANN001 (Config)
    """Two schedule intervals (from `[metrics] schedule`, as the metrics take it; 15 minutes when not given):
    one missed cycle is a late one, two mean cycles stopped."""
    interval = DEFAULT_INTERVAL
    if config.metrics.schedule:
        from dreadpi.cron import Schedule

        interval = Schedule(config.metrics.schedule).interval()
    return int(2 * interval)


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    from dreadpi import clock

    return clock.iso(clock.local(epoch))


def control(override: dict | None, now: float) -> str | None:
    """The select's state: automatic, or the shortest `normal for N h` that covers what is left of a drm0
    override; None (Home Assistant shows unknown) for an override no option describes, such as
    `dreadpi override drm2 --for 1d`, rather than an option that would be wrong."""
    if not override or float(override.get("until") or 0) <= now:
        return CONTROL[0][0]
    left = float(override["until"]) - now
    for option, mode, duration in CONTROL[1:]:
        if mode == override.get("mode") and left <= int(duration[:-1]) * 3600:
            return option
    return None


def state_document(state, now: float, hidden: tuple = ()) -> dict:  # noqa: ANN001 (state.State)
    """What the state topic carries: the last cycle, as `dreadpi status --json` says it, and its health."""
    from dreadpi import modes
    from dreadpi.reports.notify import redact

    override = state.override if state.override and float(state.override.get("until") or 0) > now else None
    return {
        "mode": state.mode,
        "percent": modes.PERCENT.get(state.mode) if state.mode else None,
        "watts": state.watts,
        "reading_age": round(now - state.reading_at) if state.reading_at else None,
        "reason": redact(state.reason, hidden),
        "failsafe": state.failsafe,
        "override": {"mode": override["mode"], "until": _iso(override["until"])} if override else None,
        "override_until": _iso(override["until"]) if override else None,
        "control": control(override, now),
        "problem": state.problem,
        "version": __version__,
        "updated_at": _iso(state.updated_at),
        "health": {
            "failing_since": _iso(state.failing_since),
            "consecutive_failsafe": state.consecutive_failsafe,
            "problem": state.problem,
            "last_good_reading_at": _iso(state.last_good_reading_at),
            "credential_expires_at": _iso(state.credential_expires_at),
            "switches_total": state.switches_total,
        },
    }


# (component, object id, name, keys) of each entity; every state entity reads the state topic's JSON.
_ENTITIES = (
    ("sensor", "generation", "Generation",
     {"device_class": "power", "unit_of_measurement": "W", "state_class": "measurement",
      "value_template": "{{ value_json.watts }}"}),
    ("sensor", "mode", "Mode",
     {"device_class": "enum", "options": ["drm0", "drm3", "drm2", "drm1"], "value_template": "{{ value_json.mode }}",
      "icon": "mdi:air-conditioner"}),
    ("sensor", "permitted", "Permitted input",
     {"unit_of_measurement": "%", "state_class": "measurement", "value_template": "{{ value_json.percent }}",
      "icon": "mdi:gauge"}),
    ("sensor", "reason", "Reason", {"value_template": "{{ value_json.reason[:255] }}", "icon": "mdi:information"}),
    ("binary_sensor", "problem", "Problem",
     {"device_class": "problem", "value_template": "{{ 'ON' if value_json.problem else 'OFF' }}",
      "json_attributes_template": "{{ value_json.health | tojson }}"}),
    ("sensor", "override_end", "Override ends",
     {"device_class": "timestamp", "value_template": "{{ value_json.override_until }}"}),
)


def discovery(config, host: str) -> list:  # noqa: ANN001 (Config)
    """[(topic, JSON text)] of Home Assistant's MQTT discovery configs: one device, its state entities, and the
    override select. Unique ids depend on the host name only, so they stay the same from cycle to cycle."""
    settings = config.mqtt
    node = node_id(host)
    state_topic, command_topic, listener_topic = topics(settings)
    device = {"identifiers": [node], "name": f"dreadpi {host}", "manufacturer": "dreadpi",
              "model": "DRED (AS/NZS 4755 demand response)", "sw_version": __version__}
    origin = {"name": "dreadpi", "sw_version": __version__}
    expiry = expire_after(config)
    found = []
    for component, object_id, name, keys in _ENTITIES:
        payload = {"name": name, "unique_id": f"{node}_{object_id}", "device": device, "origin": origin,
                   "state_topic": state_topic, "expire_after": expiry, **keys}
        if "json_attributes_template" in keys:
            payload["json_attributes_topic"] = state_topic
        found.append((f"{settings.discovery_prefix}/{component}/{node}/{object_id}/config", payload))
    found = [(topic, json.dumps(payload, sort_keys=True)) for topic, payload in found]
    select_topic = f"{settings.discovery_prefix}/select/{node}/control/config"
    if not settings.commands:
        return found + [(select_topic, "")]  # an empty config removes the select, should commands have been on
    select = {"name": "Control", "unique_id": f"{node}_control", "device": device, "origin": origin,
              "icon": "mdi:hand-back-right", "command_topic": command_topic, "command_template": COMMAND_TEMPLATE,
              "options": [option for option, _, _ in CONTROL], "state_topic": state_topic,
              "value_template": "{{ value_json.control }}", "availability_topic": listener_topic,
              "payload_available": ONLINE, "payload_not_available": OFFLINE, "qos": 1}
    return found + [(select_topic, json.dumps(select, sort_keys=True))]


def messages(config, state, now: float, host: str) -> list:  # noqa: ANN001 (Config, state.State)
    """[[topic, payload, retain]] a cycle publishes: the discovery configs, then the state, all retained (Home
    Assistant, restarted, finds dreadpi without waiting for the next cycle)."""
    from dreadpi.reports.notify import secrets

    document = json.dumps(state_document(state, now, secrets(config)), sort_keys=True)
    return [[topic, payload, True] for topic, payload in discovery(config, host)] + [
        [topics(config.mqtt)[0], document, True]]


def job(config, host: str, role: str) -> dict:  # noqa: ANN001 (Config)
    """What the child needs to reach the broker, and nothing else of the config. The CA is sent as text, so
    the unprivileged child never has to read a file root chose."""
    settings = config.mqtt
    ca = ""
    if settings.tls and settings.ca_file:
        with open(settings.ca_file, encoding="ascii", errors="replace") as handle:
            ca = handle.read()
    state_topic, command_topic, listener_topic = topics(settings)
    return {"host": settings.host, "port": settings.port, "tls": settings.tls, "ca": ca,
            "username": settings.username, "password": settings.password,
            "client_id": f"{node_id(host)}_{role}"[:64], "budget": max(1.0, settings.timeout - HEADROOM),
            "command_topic": command_topic, "availability_topic": listener_topic, "commands": settings.commands,
            "options": {option: [mode, duration] for option, mode, duration in CONTROL}}


def invocation(job: dict, entry: str, python: str = PYTHON) -> tuple:
    """(argv, stdin): the child's source and its job travel on stdin; argv names only the entry point
    (`publish` or `listen`), the same for every Pi."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fetch_mqtt.py"), encoding="utf-8") as f:
        source = f.read()
    stdin = (json.dumps(source) + "\n" + json.dumps(job) + "\n").encode("utf-8")
    return (python, "-I", "-c", _BOOT, f"run_{entry}"), stdin


SERVICE_FILE = "mqtt-service.json"  # in the state directory while `dreadpi mqtt-listen` runs: its pid, start time
WAKE = signal.SIGUSR1  # what a cycle sends the service: "the state changed, publish it"


def _started(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/<pid>/stat field 22): with the pid, what
    tells the service from a process that got its pid after it died."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[19])


def announce(state_dir: str, connected: bool = False, problem: str | None = None) -> None:
    """The service says it runs (and handles WAKE): from now on cycles leave publishing to it. Written again
    when its connection comes or goes, for `dreadpi status`."""
    from dreadpi.state import write_atomic

    record = {"pid": os.getpid(), "started": _started(os.getpid()), "connected": connected,
              "problem": problem, "since": time.time()}
    write_atomic(os.path.join(state_dir, SERVICE_FILE), json.dumps(record), durable=False)


def withdraw(state_dir: str) -> None:
    """The service stops: cycles publish by themselves again."""
    try:
        os.unlink(os.path.join(state_dir, SERVICE_FILE))
    except FileNotFoundError:
        pass


def service(state_dir: str) -> dict | None:
    """What the running MQTT service last recorded (pid, connected, problem, since), or None when none runs:
    never started, or gone without withdrawing (its pid is not that process any more)."""
    try:
        with open(os.path.join(state_dir, SERVICE_FILE), encoding="ascii") as handle:
            found = json.loads(handle.read())
        pid, started = int(found["pid"]), int(found["started"])
        if pid <= 1 or _started(pid) != started:
            return None
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None
    return found


def hand_off(config) -> bool:  # noqa: ANN001 (Config)
    """Tell the running MQTT service that the state changed, so it publishes it on its open connection: no
    interpreter, paho import or TLS handshake for this cycle. False when no service runs, and the cycle
    publishes by itself."""
    running = service(config.state_dir)
    if running is None:
        return False
    try:
        os.kill(int(running["pid"]), WAKE)
    except OSError:
        return False
    return True


def deliver(config, messages: list, python: str = PYTHON) -> str | None:  # noqa: ANN001 (Config)
    """Publish `messages` in the sandbox; None when the broker acknowledged every one, else why not, as a
    sentence naming the broker by its config keys, never the password."""
    from dreadpi.errors import DreadpiError
    from dreadpi.reports import run_sandboxed
    from dreadpi.reports.notify import redact, secrets

    host = os.uname().nodename
    try:
        task = {**job(config, host, "publish"), "messages": messages}
        argv, stdin = invocation(task, "publish", python)
        why = _decode(run_sandboxed(config, argv, stdin, config.mqtt.timeout, "the publisher"), len(messages))
    except (DreadpiError, OSError) as err:
        why = str(err)
    if why is None:
        return None
    where = f"mqtt.host {config.mqtt.host} port {config.mqtt.port}"
    return redact(f"{where}: {why}", secrets(config))


def _decode(stdout: bytes, count: int) -> str | None:
    """None when the child reports every message published, else its fixed phrase; checked, as it talked to
    the network."""
    try:
        result = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "the publisher printed no result"
    if not isinstance(result, dict):
        return "the publisher's result is not a JSON object"
    if isinstance(result.get("error"), str):
        return result["error"][:200]
    if result.get("published") != count:
        return "the publisher reported not everything published"
    return None
