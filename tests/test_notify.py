"""Push notifications: told once when dreadpi starts failing (not for a blip), once when it works again, once a
day when its credential is about to expire, once when the relays cannot be driven; never a secret, never as
root, and a receiver that is down or hangs changes nothing else.

Cycles are the real `dreadpi run` in a fresh process, as cron runs it, with a script collector whose output the
test changes. The sender is Debian's apprise package under Debian's `/usr/bin/python3 -I`, in the sandbox, as on
a Pi; the receiver is an HTTP server of this test's own on loopback, which also looks up who is sending: the
socket's owner in /proc/net/tcp, and the process holding it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dreadpi import config, state
from dreadpi.cycle import Outcome
from dreadpi.errors import ConfigError, DreadpiError
from dreadpi.policy import Decision
from dreadpi.reports import notify
from tests import debian
from tests.apiworld import ensure_debian_requests
from tests.conftest import REPO, dreadpi, error_log, processes_with, require_root, write_config
from tests.test_health import jwt, watts_script

PASSWORD = "pw-S3cretN0tifyPass"  # secret-looking parts of a notify URL: never in a message, log or state
HOOK = "hook-T0kenXyZ123abc"
TOPIC = "dreadpi-T0picQw9"
NOBODY = 65534


@pytest.fixture(scope="module")
def apprise():
    """Debian's apprise for Debian's python3, as the role installs it on a Pi (bookworm: 1.2.0)."""
    require_root()
    ensure_debian_requests()
    check = subprocess.run(["/usr/bin/python3", "-I", "-c", "import apprise; print(apprise.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        debian.install(["apprise"])
        check = subprocess.run(["/usr/bin/python3", "-I", "-c", "import apprise; print(apprise.__version__)"],
                               capture_output=True, text=True, check=True)
    return check.stdout.strip()


def _sender(client_port: int, server_port: int) -> dict:
    """Who owns the client end of a loopback connection: the uid in /proc/net/tcp, and the process holding the
    socket (its uid, no_new_privs, and command line)."""
    found: dict = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == client_port and int(remote[1], 16) == server_port:
            found = {"uid": int(fields[7]), "inode": fields[9]}
            break
    if not found:
        return found
    target = f"socket:[{found['inode']}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            holds = any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd"))
            if holds:
                status = Path(f"/proc/{pid}/status").read_text()
                found["process_uid"] = int(status.split("\nUid:")[1].split()[0])
                found["no_new_privs"] = status.split("\nNoNewPrivs:")[1].split()[0]
                found["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                break
        except (OSError, IndexError):
            continue
    return found


class Receiver:
    """An HTTP server on 127.0.0.1 at a free port, recording what Apprise's json:// and ntfy:// send; `hang`
    accepts each request and never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.requests: list = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append({"path": self.path, "body": json.loads(body or b"{}"),
                                          "sender": _sender(self.client_address[1], receiver.port)})
                if hang:
                    receiver.release.wait(60)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def messages(self, path: str) -> list:
        """(title, text, type) of each message to `path`, whichever service's JSON carried it."""
        return [(r["body"].get("title"), r["body"].get("message"), r["body"].get("type", ""))
                for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def json_url(port: int) -> str:
    return f"json://dreadpi:{PASSWORD}@127.0.0.1:{port}/{HOOK}"


def run(cfg: Path) -> tuple:
    result = dreadpi("run", "-c", str(cfg))
    done = dreadpi("status", "--json", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    return result, json.loads(done.stdout)


def saved(directory: Path) -> dict:
    return json.loads((directory / "state" / "state.json").read_text())


# The real thing: dreadpi run, Apprise in the sandbox, a receiver on loopback.

def test_a_failure_is_told_once_after_the_run_and_the_recovery_once(apprise, world_dir, receiver):
    command, write = watts_script(world_dir)
    urls = f"{json_url(receiver.port)}\n  ntfy://127.0.0.1:{receiver.port}/{TOPIC}"
    cfg = write_config(world_dir, {"script": {"command": command}, "notify": {"urls": urls, "after": "3"}})
    outputs = []

    def cycle(text: str) -> tuple:
        write(text)
        result = dreadpi("run", "-c", str(cfg))
        outputs.append(result.stdout + result.stderr)
        return len(receiver.messages(f"/{HOOK}")), len(receiver.messages("/"))

    assert cycle("550") == (0, 0)
    assert cycle("junk") == (0, 0)  # one blip pages nobody
    assert cycle("550") == (0, 0)  # and its end is no recovery: nobody was told
    assert [cycle("junk") for _ in range(4)] == [(0, 0), (0, 0), (1, 1), (1, 1)]  # after = 3, then once
    assert saved(world_dir)["notified_problem"] == "bad-answer"
    title, text, kind = receiver.messages(f"/{HOOK}")[0]
    assert title == f"dreadpi on {os.uname().nodename}: failing (bad-answer)" and kind == "failure"
    assert "No usable reading for 3 cycles in a row, since " in text
    assert "script: expected numbers, got 'junk'" in text  # the cause
    assert "What to do: the data source answered with something dreadpi cannot use" in text
    assert "the failsafe holds the air conditioner in drm0 (100 %)" in text
    assert receiver.messages("/")[0][:2] == (title, text)  # ntfy carried the same message
    assert [r["body"].get("topic") for r in receiver.requests if r["path"] == "/"] == [TOPIC]
    assert [cycle("350") for _ in range(2)] == [(2, 2), (2, 2)]  # the recovery, once
    title, text, kind = receiver.messages(f"/{HOOK}")[1]
    assert title.endswith(": working again") and kind == "success"
    assert text.startswith("Readings are usable again: drm2 (50 %), 350 W is below threshold_low (400 W). "
                           "It had been failing (bad-answer) since ")
    assert saved(world_dir)["notified_problem"] is None
    # Sent as nobody, confined, with the URLs on stdin: nothing secret on its command line.
    senders = [r["sender"] for r in receiver.requests]
    assert len(senders) == 4 and all(s["uid"] == NOBODY and s["process_uid"] == NOBODY for s in senders), senders
    assert all(s["no_new_privs"] == "1" and s["cmdline"].startswith("/usr/bin/python3 -I -c") for s in senders)
    assert not any(secret in s["cmdline"] for s in senders for secret in (PASSWORD, HOOK, TOPIC))
    assert all(r["body"] for r in receiver.requests)
    said = [(r["body"].get("title"), r["body"].get("message")) for r in receiver.requests]  # ntfy's topic is not
    everything = (json.dumps(said) + error_log(world_dir) + "".join(outputs)
                  + (world_dir / "state" / "state.json").read_text())
    for secret in (PASSWORD, HOOK, TOPIC):
        assert secret not in everything
    assert "warning" not in error_log(world_dir)


def test_a_relay_error_is_told_once(apprise, world_dir, receiver):
    overrides = {"script": {"command": "/bin/echo 350"}, "relays": {"backend": "rpi-gpio"},
                 "notify": {"urls": json_url(receiver.port)}}
    cfg = write_config(world_dir, overrides)
    codes = [dreadpi("run", "-c", str(cfg)).returncode for _ in range(3)]
    assert codes == [5, 5, 5]  # RPi.GPIO on a machine with no GPIO cannot drive
    assert len(receiver.requests) == 1
    title, text, kind = receiver.messages(f"/{HOOK}")[0]
    assert title.endswith(": relays not driven") and kind == "failure"
    assert text.startswith("The relays could not be driven: ")
    assert "dreadpi wanted drm2 (50 %): 350 W is below threshold_low (400 W)" in text
    assert "What to do: check the relay board's power and wiring" in text
    assert saved(world_dir)["notified_problem"] == "relay"
    overrides["relays"]["backend"] = "sim"
    result, _ = run(write_config(world_dir, overrides))
    assert result.returncode == 0
    assert len(receiver.requests) == 2
    assert receiver.messages(f"/{HOOK}")[1][1].startswith("The relays are driven again: drm2 (50 %)")


def test_an_expiring_credential_is_told_at_most_once_a_day(apprise, world_dir, receiver):
    token = jwt({"aud": "123456789012", "exp": int(time.time()) + 10 * 86400, "enphaseUser": "owner"})
    cfg = write_config(world_dir, {"collector": {"source": "envoy", "timeout": "2"},
                                   "envoy": {"host": "127.0.0.1", "token": token},  # nothing listens there
                                   "notify": {"urls": json_url(receiver.port), "after": "100"}})
    first, second = (dreadpi("run", "-c", str(cfg)) for _ in range(2))
    assert len(receiver.requests) == 1
    title, text, kind = receiver.messages(f"/{HOOK}")[0]
    assert title.endswith(": credential expiring") and kind == "warning"
    assert text.startswith("The Envoy owner token expires at ")
    assert text.endswith("in 10 days: get a new one at https://entrez.enphaseenergy.com and set envoy.token")
    # A day later it is told again.
    state_file = world_dir / "state" / "state.json"
    data = json.loads(state_file.read_text())
    data["credential_warned_at"] -= 86400 + 60
    state_file.write_text(json.dumps(data))
    third = dreadpi("run", "-c", str(cfg))
    assert len(receiver.requests) == 2
    everything = (json.dumps([r["body"] for r in receiver.requests]) + error_log(world_dir) + state_file.read_text()
                  + "".join(r.stdout + r.stderr for r in (first, second, third)))
    for secret in (token, token.split(".")[1], PASSWORD, HOOK):
        assert secret not in everything


def test_a_cycle_without_a_transition_starts_no_sender(apprise, world_dir, receiver):
    cfg = write_config(world_dir, {"notify": {"urls": json_url(receiver.port), "after": "1"}})
    # Counts the processes the cycle forks, in the cycle's own process: the collector is the only one.
    code = ("import os, sys; from dreadpi.cli import main; forks = []; real = os.fork\n"
            "def fork():\n    forks.append(1)\n    return real()\n"
            "os.fork = fork; main(['run', '-c', sys.argv[1]]); "
            "print('forks', len(forks), 'dreadpi.reports.notify' in sys.modules)")

    def forks() -> str:
        done = subprocess.run(["/usr/bin/python3", "-c", code, str(cfg)], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO), "TZ": "UTC"}, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert [forks() for _ in range(3)] == ["forks 1 True"] * 3  # notify is loaded, and decides: nothing to say
    assert receiver.requests == [] and "warning" not in error_log(world_dir)
    write_config(world_dir, {"script": {"command": "/bin/false"}, "notify": {"urls": json_url(receiver.port),
                                                                             "after": "1"}})
    assert forks() == "forks 2 True"  # the failure: collector and sender
    assert len(receiver.requests) == 1
    write_config(world_dir, {"script": {"command": "/bin/false"}})
    assert forks() == "forks 1 False"  # notify off: not even imported


@pytest.fixture
def closed_port():
    """A port on loopback that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("how", ["closed", "hanging"])
def test_an_undeliverable_notification_changes_nothing_else(apprise, world_dir, closed_port, how):
    hanging = Receiver(hang=True) if how == "hanging" else None
    port = hanging.port if hanging else closed_port
    urls = f"zzz://not-a-service-apprise-knows {json_url(port)}"
    results = {}
    try:
        # notify.timeout 4: the sender gives up after 2 s (keeping 2 for itself), before Apprise's own 4 s
        # read timeout, and the sandbox kills it at 4 s if it does not.
        for name, notify_section in (("plain", {}), ("notified", {"urls": urls, "after": "1", "timeout": "4"})):
            directory = world_dir / name
            directory.mkdir()
            command, write = watts_script(directory)
            cfg = write_config(directory, {"script": {"command": command}, "notify": notify_section})
            steps = []
            for text in ("550", "junk", "junk")[:3 if how == "closed" else 2]:  # a retry costs a hang 2 s
                write(text)
                started = time.monotonic()
                result = dreadpi("run", "-c", str(cfg))
                assert time.monotonic() - started < 4 + 2, how  # notify.timeout, and the cycle's own time
                info = json.loads(dreadpi("status", "--json", "-c", str(cfg)).stdout)
                steps.append((result.returncode, info["mode"], info["relays"],
                              (directory / "state" / "sim-pins.json").read_text(), result.stdout[19:]))
            results[name] = steps
        if hanging:
            assert len(hanging.requests) == 1  # it did get the request, and never answered
    finally:
        if hanging:
            hanging.close()
    assert results["notified"] == results["plain"]  # exit codes, modes, relays, pins, printed lines
    assert [code for code, *_ in results["plain"]] == [0, 4, 4][:len(results["plain"])]
    log = error_log(world_dir / "notified")
    why = "gave up after 2 s" if hanging else "connection refused"
    tries = len(results["plain"]) - 1  # every failing cycle tries again
    assert log.count(f"warning: notification 'failing (bad-answer)' not delivered to notify.urls #2 (json): {why}") \
        == tries, log
    assert log.count("not delivered to notify.urls #1 (zzz): Apprise does not understand this URL") == tries
    assert log.count("warning: notification 'failing (bad-answer)' will be tried again next cycle") == tries
    assert saved(world_dir / "notified")["notified_problem"] is None
    for secret in (PASSWORD, HOOK, "not-a-service", "127.0.0.1", "json://"):
        assert secret not in log
    assert processes_with("fetch_notify") == []  # the sender is gone, whole


# What to say: the pure decision, state by state.

def outcome(mode: str = "drm2", reason: str = "350 W is below threshold_low (400 W)", failsafe: bool = False,
            credential: str | None = None, **fields) -> Outcome:
    after = state.State(mode=mode, reason=reason, failsafe=failsafe, **fields)
    return Outcome(Decision(mode, reason, failsafe), None, after, (1e9, 0), [], 0.0, credential)


BROKEN = {"mode": "drm0", "reason": "failsafe (drm0): envoy: token refused (HTTP 401): get a new one", "failsafe": True,
          "problem": "auth", "failing_since": 1e9 - 600}


@pytest.mark.parametrize(("before", "after", "headline", "remembered"), [
    ({}, {}, None, None),  # a good cycle after good ones
    ({}, {**BROKEN, "consecutive_failsafe": 1}, None, None),  # a blip
    ({"consecutive_failsafe": 1}, {**BROKEN, "consecutive_failsafe": 2}, "failing (auth)", "auth"),
    ({"consecutive_failsafe": 2, "notified_problem": "auth"}, {**BROKEN, "consecutive_failsafe": 3}, None, "auth"),
    ({"consecutive_failsafe": 2, "notified_problem": None}, {**BROKEN, "consecutive_failsafe": 3},
     "failing (auth)", "auth"),  # not delivered last time: told now
    ({"notified_problem": "auth", "failing_since": 1}, {}, "working again", None),
    ({"notified_problem": "auth"}, {"problem": "unreachable"}, None, "auth"),  # outside active hours: not well yet
    ({"notified_problem": "relay"}, {**BROKEN, "consecutive_failsafe": 5}, "failing (auth)", "auth"),
    ({"credential_warned_at": 5.0}, {"credential_warned_at": 1e9}, "credential expiring", None),
    ({"credential_warned_at": 5.0}, {"credential_warned_at": 5.0}, None, None),
])
def test_what_is_told_follows_transitions_only(before, after, headline, remembered):
    notice = notify.plan(state.State(**before), outcome(**after), 2, host="pi")
    assert (notice.title.partition(": ")[2] if notice else None) == headline
    assert (notice.notified if notice else before.get("notified_problem")) == remembered


def test_a_relay_error_is_told_once_per_run():
    broken = outcome(**{**BROKEN, "consecutive_failsafe": 3})
    first = notify.plan(state.State(notified_problem="auth"), broken, 2, relay_error="GPIO busy")
    assert first.title == "dreadpi: relays not driven" and first.notified == "relay" and first.unsent == "auth"
    assert "The relays could not be driven: GPIO busy." in first.body
    assert notify.plan(state.State(notified_problem="relay"), broken, 2, relay_error="GPIO busy") is None


def test_no_message_or_warning_carries_a_secret():
    url = f"ntfy://alice:{PASSWORD}@ntfy.example.org/{TOPIC}?priority=high&token={HOOK}"
    cfg = config.parse_text(f"[collector]\nsource = envoy\n[envoy]\nhost = envoy.local\ntoken = aaa.bbb.ccc\n"
                            f"[notify]\nurls = {url}\n")
    hidden = notify.secrets(cfg)
    leaky = outcome(**{**BROKEN, "consecutive_failsafe": 2,
                       "reason": f"failsafe (drm0): it said {PASSWORD} {TOPIC} {HOOK} aaa.bbb.ccc and {url}"})
    notice = notify.scrub(notify.plan(state.State(), leaky, 2), hidden)
    for secret in (PASSWORD, TOPIC, HOOK, "aaa.bbb.ccc", url):
        assert secret not in notice.body
    assert "it said *** *** *** *** and ***." in notice.body
    assert "ntfy.example.org" not in hidden and "priority" not in hidden  # a host name and a query key are not


@pytest.mark.parametrize(("printed", "sent", "failed"), [
    (b'{"sent": [1], "failed": [[2, "connection refused"]]}', [1], [(2, "connection refused")]),
    (b'{"sent": [1, 3, true, "2"], "failed": [[1.0, "x"], [9, "y"], "z"]}', [1], []),  # only what can be true
    (b'{"sent": 5, "failed": {"1": "x"}}', [], [(0, "the sender reported nothing sent")]),
    (b'{"sent": [], "failed": [], "error": "cannot import apprise: install Debian\'s apprise package"}', [],
     [(0, "cannot import apprise: install Debian's apprise package")]),
])
def test_what_the_sender_prints_is_checked(printed, sent, failed):
    assert notify._decode(printed, 2) == (sent, failed)


def test_junk_from_the_sender_is_an_error():
    for junk in (b"", b"Traceback (most recent call last):", b"[1]", b"\xff"):
        with pytest.raises(DreadpiError):
            notify._decode(junk, 1)


# The [notify] section.

def test_notify_settings_parse():
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n[notify]\nurls = ntfy://topic-one\n"
                            "  mailto://me:pw@example.org json://h:1/x\nafter = 3\ntimeout = 5\n")
    assert cfg.notify == config.NotifySettings(("ntfy://topic-one", "mailto://me:pw@example.org", "json://h:1/x"),
                                               3, 5.0)
    default = config.parse_text("[script]\ncommand = /bin/echo 1\n")
    assert default.notify == config.NotifySettings((), 2, 20.0)


@pytest.mark.parametrize(("urls", "expected"), [
    (f"ntfy:/{TOPIC}", "notify.urls: URL 1 of 1 is not an Apprise URL (scheme://..."),
    (f"json://ok/{HOOK} https//{PASSWORD} \"ntfy://{TOPIC}\"", "notify.urls: URLs 2, 3 of 3 are not an Apprise URL"),
    (f"{PASSWORD}", "notify.urls: URL 1 of 1 is not"),
    (f"x://{TOPIC}", "notify.urls: URL 1 of 1 is not"),  # a one-letter scheme is a Windows drive, not a service
    (" ".join(f"ntfy://{TOPIC}{n}" for n in range(11)), "notify.urls: at most 10 URLs, got 11"),
])
def test_a_bad_url_is_named_by_its_position_never_quoted(urls, expected):
    with pytest.raises(ConfigError) as caught:
        config.parse_text(f"[script]\ncommand = /bin/echo 1\n[notify]\nurls = {urls}\n")
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems
    for secret in (PASSWORD, TOPIC, HOOK):
        assert secret not in str(caught.value)


@pytest.mark.parametrize(("line", "expected"), [
    ("after = 0", "notify.after: must be at least 1, got 0"),
    ("after = two", "notify.after: expected a whole number"),
    ("timeout = 0.5", "notify.timeout: must be at least 1, got 0.5"),
    ("url = ntfy://x", "notify.url: unknown key (did you mean urls?)"),
])
def test_bad_notify_settings_name_the_key(line, expected):
    with pytest.raises(ConfigError) as caught:
        config.parse_text(f"[script]\ncommand = /bin/echo 1\n[notify]\n{line}\n")
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_check_config_keeps_a_bad_url_to_itself(world_dir):
    cfg = write_config(world_dir, {"notify": {"urls": f"json://a:{PASSWORD}@h/x tgram//{TOPIC}"}})
    done = dreadpi("check-config", str(cfg))
    assert done.returncode == 2
    assert "notify.urls: URL 2 of 2 is not an Apprise URL" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout and TOPIC not in done.stderr + done.stdout
