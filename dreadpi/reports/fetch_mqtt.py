"""Talk to the MQTT broker with paho, inside the sandbox (see dreadpi.reports.mqtt for how this runs).

Runs as the unprivileged user under Debian's `/usr/bin/python3 -I`, with an empty environment and cwd `/`,
needing nothing but the standard library and Debian's python3-paho-mqtt: 1.6 (bookworm) or 2.x (trixie), whose
callback API differs. It never imports `dreadpi`: the root parent sends this source on stdin, then one line of
JSON, the job (broker, credentials, CA as text, topics). argv[1] says what to do:

- `publish`: publish the job's `messages` (QoS 1, each acknowledged) within `budget` seconds; print one JSON
  object, {"published": count} or {"error": phrase}.
- `listen`: the MQTT service's network side. Stay connected, reconnecting with back-off; keep the availability
  topic `online` (the last will says `offline`); with the job's `commands`, subscribe to the command topic.
  Each further line on stdin is a JSON list of [topic, payload, retain] to publish (QoS 1) on the open
  connection. Print one JSON line per event: {"event": "connected"}, {"event": "error", "why": phrase},
  {"event": "published", "count": n} once the broker acknowledged a whole list, {"event": "unpublished"} for a
  list that was not (the connection was down or dropped), {"event": "command", "mode",
  "for", "at"} for a command of the right shape, {"event": "refused", "why": phrase} for anything else. Exits
  when the parent closes stdin.

What it prints is fixed phrases and checked fields, never a payload as received, the password or a traceback:
the parent logs it, and the root side validates every command again before acting on it.
"""

from __future__ import annotations

import json
import math
import re
import select
import signal
import sys
import time

MAX_COMMAND = 512  # bytes; a command is a few dozen
_MODES = ("drm0", "drm3", "drm2", "drm1", "clear")
_DURATION = r"[0-9]{1,7}[dhms]?(?:[0-9]{1,7}[dhms]){0,3}"


class TimeUp(BaseException):
    """The budget is spent."""


class Failed(Exception):
    """A fixed phrase for the parent."""


def phrase(err: BaseException) -> str:
    """What went wrong connecting, as a fixed phrase (exception texts may quote addresses or worse)."""
    import ssl

    if isinstance(err, TimeUp):
        return "no answer in time"
    if isinstance(err, Failed):
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        return "the broker's certificate was not accepted (mqtt.ca_file, mqtt.host)"
    if isinstance(err, ssl.SSLError):
        return "TLS failed (is mqtt.tls right for this port?)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    if err.__class__.__name__ == "gaierror":
        return "the name does not resolve"
    if isinstance(err, OSError):
        return "connection failed"
    return f"internal error in the MQTT child ({err.__class__.__name__})"


def refusal(code: int) -> str:
    """The broker's CONNACK refusal (MQTT 3.1.1 codes, or paho 2's MQTT 5 reason codes for them)."""
    if code in (4, 5, 134, 135):
        return "the broker refused the user name or password (mqtt.username, mqtt.password, its ACL)"
    return f"the broker refused the connection (code {code})"


def client(job: dict):  # noqa: ANN201 (paho's Client)
    import paho.mqtt.client as mqtt

    kwargs = {"client_id": job["client_id"], "clean_session": True, "protocol": mqtt.MQTTv311}
    api = getattr(mqtt, "CallbackAPIVersion", None)  # paho 2.x; 1.6 has only what 2.x calls VERSION1
    made = mqtt.Client(api.VERSION2, **kwargs) if api else mqtt.Client(**kwargs)
    if job["username"]:
        made.username_pw_set(job["username"], job["password"] or None)
    if job["tls"]:
        import ssl

        made.tls_set_context(ssl.create_default_context(cadata=job["ca"] or None))
    return made


def code_of(rc: object) -> int:
    """An int from paho 1.6's int or paho 2's ReasonCode."""
    return int(getattr(rc, "value", rc))


def loop_until(made, done, deadline: float) -> None:  # noqa: ANN001
    """Run paho's network loop until done(); a lost connection is a Failed."""
    while not done():
        if time.monotonic() >= deadline:
            raise TimeUp
        if made.loop(0.2) != 0:
            raise Failed("the broker closed the connection")


def publish(job: dict, result: dict) -> None:
    made = client(job)
    connack: list = []
    made.on_connect = lambda client, userdata, flags, rc, properties=None: connack.append(code_of(rc))
    deadline = time.monotonic() + job["budget"]
    made.connect(job["host"], job["port"], keepalive=60)
    try:
        loop_until(made, lambda: connack, deadline)
    except Failed:
        if not connack:
            raise
    if connack[0] != 0:
        raise Failed(refusal(connack[0]))
    sent = [made.publish(topic, payload, qos=1, retain=bool(retain)) for topic, payload, retain in job["messages"]]
    loop_until(made, lambda: all(info.is_published() for info in sent), deadline)
    made.disconnect()
    result["published"] = len(sent)


def run_publish() -> None:
    job = json.loads(sys.stdin.readline())
    result: dict = {}

    def expired(signum: int, frame: object) -> None:
        raise TimeUp

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, float(job["budget"])))
    try:
        publish(job, result)
    except ImportError:
        result["error"] = "cannot import paho: install Debian's python3-paho-mqtt package"
    except MemoryError:
        result["error"] = "ran out of memory (collector.memory_limit)"
    except BaseException as err:  # noqa: BLE001 (a phrase, never a traceback: see above)
        result["error"] = phrase(err)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


def command(payload: bytes, options: dict) -> dict:
    """{"mode", "for", "at"} from a command of the right shape, else Failed with the reason (never the
    payload). Shape only: the root side checks the mode, the duration and the time against its config."""
    if len(payload) > MAX_COMMAND:
        raise Failed("longer than a command")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Failed("not JSON (is the select's command_template the one dreadpi published?)") from None
    if not isinstance(data, dict):
        raise Failed("not a JSON object")
    at = data.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise Failed("no time (at) in the command")
    if "option" in data:
        if set(data) != {"option", "at"} or data["option"] not in options:
            raise Failed("not one of the select's options")
        mode, duration = options[data["option"]]
    else:
        if not set(data) <= {"mode", "for", "at"}:
            raise Failed("unknown fields")
        mode, duration = data.get("mode"), data.get("for")
        if mode not in _MODES:
            raise Failed("not a mode dreadpi knows")
        if duration is not None and not (isinstance(duration, str) and re.fullmatch(_DURATION, duration)):
            raise Failed("not a duration")
    return {"mode": mode, "for": duration, "at": int(at)}


class Requests:
    """The lists to publish the parent writes on stdin, one JSON line each; `closed` once the parent is gone."""

    def __init__(self) -> None:
        self.pending = b""
        self.closed = False

    def read(self) -> list:
        """What arrived (call when stdin is readable): complete lines, decoded; a line that is not a list of
        [str, str, bool] is dropped (the parent never writes one)."""
        import os

        chunk = os.read(0, 65536)
        if not chunk:
            self.closed = True
            return []
        self.pending += chunk
        lists = []
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            try:
                found = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(found, list) and all(
                    isinstance(m, list) and len(m) == 3 and isinstance(m[0], str) and isinstance(m[1], str)
                    for m in found):
                lists.append(found)
        return lists


def run_listen() -> None:
    job = json.loads(sys.stdin.readline())

    def emit(event: dict) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        made = client(job)
    except ImportError:
        emit({"event": "error", "why": "cannot import paho: install Debian's python3-paho-mqtt package"})
        return

    def connected(client, userdata, flags, rc, properties=None) -> None:  # noqa: ANN001
        code = code_of(rc)
        if code != 0:
            emit({"event": "error", "why": refusal(code)})
            return
        if job.get("commands", True):
            client.subscribe(job["command_topic"], qos=1)
        client.publish(job["availability_topic"], "online", qos=1, retain=True)
        emit({"event": "connected"})

    def received(client, userdata, message) -> None:  # noqa: ANN001
        try:
            emit({"event": "command", **command(message.payload, job["options"])})
        except Failed as err:
            emit({"event": "refused", "why": str(err)})

    made.on_connect = connected
    made.on_message = received
    made.will_set(job["availability_topic"], "offline", qos=1, retain=True)
    requests = Requests()
    sending: list = []  # the paho message infos of each list being published, oldest first
    delay, linked = 1.0, False
    while True:
        sock = made.socket() if linked else None
        watched = [sys.stdin] + ([sock] if sock is not None else [])
        writing = [sock] if sock is not None and made.want_write() else []
        buffered = sock is not None and getattr(sock, "pending", lambda: 0)()  # TLS bytes read, not yet seen
        readable = select.select(watched, writing, [], 1.0 if linked and not buffered else 0)[0]
        if sys.stdin in readable:
            for found in requests.read():
                if made.is_connected():
                    sending.append([made.publish(topic, payload, qos=1, retain=bool(retain))
                                    for topic, payload, retain in found])
                else:
                    emit({"event": "unpublished"})  # the parent sends it again after the next "connected"
            if requests.closed:
                return  # the parent is gone
        try:
            if not linked:
                made.connect(job["host"], job["port"], keepalive=60)
                linked = True
            if made.loop(0) != 0:
                raise Failed("the broker closed the connection")
            if made.is_connected():
                delay = 1.0
            while sending and all(info.is_published() for info in sending[0]):
                emit({"event": "published", "count": len(sending.pop(0))})
        except Exception as err:  # noqa: BLE001 (reported as a phrase; the loop carries on)
            emit({"event": "error", "why": phrase(err)})
            if sending:
                emit({"event": "unpublished"})
            linked, sending = False, []
            if select.select([sys.stdin], [], [], delay)[0]:
                if requests.read():
                    emit({"event": "unpublished"})
                if requests.closed:
                    return
            delay = min(delay * 2, 60.0)
