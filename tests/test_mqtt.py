"""Home Assistant over MQTT, with real parts: Debian's mosquitto as the broker (password file, ACL, TLS from the
test CA) on loopback, cycles as the real `dreadpi run`, the publisher and the listener's network side under
Debian's `/usr/bin/python3 -I` with Debian's python3-paho-mqtt (1.6 on bookworm) in the sandbox, and the
listener as a real `dreadpi mqtt-listen` process. The test plays Home Assistant with paho 2.x from the venv,
and one test runs the child's code under that paho 2.x too, so both callback APIs are exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dreadpi import config, mqtt_listen, state
from dreadpi.errors import ConfigError
from dreadpi.reports import fetch_mqtt, mqtt
from tests.conftest import REPO, dreadpi, error_log, processes_with, require_root, write_config
from tests.mosquitto import Client

HOST = os.uname().nodename
NODE = mqtt.node_id(HOST)
PREFIX = "dreadpi/test"
PI_USER, PI_PASSWORD = "pi-test", "pi-S3cretMqttPass"
HA_USER, HA_PASSWORD = "homeassistant", "ha-S3cretMqttPass"
GUEST_USER, GUEST_PASSWORD = "guest", "guest-S3cretPass"
NOBODY = 65534
# The broker's ACL, as the README gives it for one Pi: Home Assistant alone may write a command topic; the Pi
# writes its own state, availability and discovery configs and reads its own commands; others only read.
ACL = f"""user {HA_USER}
topic readwrite homeassistant/#
topic read dreadpi/#
topic write dreadpi/+/command

user {PI_USER}
topic write {PREFIX}/state
topic write {PREFIX}/listener
topic read {PREFIX}/command
topic write homeassistant/+/{NODE}/+/config

user {GUEST_USER}
topic read dreadpi/#
topic read homeassistant/#
"""


@pytest.fixture(scope="module")
def broker(certs):
    """One mosquitto for the module: plain and TLS listeners on loopback, killed at the end."""
    from tests import mosquitto

    require_root()
    mosquitto.install()
    directory = Path(tempfile.mkdtemp(prefix="dreadpi-broker-"))
    directory.chmod(0o755)
    ca, cert, key = mosquitto.certificate(certs, directory, "127.0.0.1", "IP:127.0.0.1,DNS:localhost")
    users = {HA_USER: HA_PASSWORD, PI_USER: PI_PASSWORD, GUEST_USER: GUEST_PASSWORD}
    server = mosquitto.Broker(directory, users, ACL, ca, cert, key)
    server.ca = ca
    yield server
    server.close()
    shutil.rmtree(directory, ignore_errors=True)


def retained(broker, *topics: str, count: int) -> dict:
    """The retained messages on `topics` ({topic: payload}), as Home Assistant finds them when it starts."""
    home = Client(broker, HA_USER, HA_PASSWORD)
    try:
        home.subscribe(*topics)
        home.wait(lambda found: len(found) >= count, 5)
        time.sleep(0.2)  # and nothing more
        assert all(is_retained for _, _, is_retained in home.messages)
        return home.latest()
    finally:
        home.close()


def clear_retained(broker) -> None:
    """Forget what earlier tests left on the broker (an empty retained message deletes one)."""
    home = Client(broker, HA_USER, HA_PASSWORD)
    try:
        home.subscribe(f"homeassistant/+/{NODE}/+/config", f"{PREFIX}/#")
        time.sleep(0.3)
        pi = Client(broker, PI_USER, PI_PASSWORD)
        for topic in home.latest():
            pi.publish(topic, "", retain=True)
        pi.close()
    finally:
        home.close()


def mqtt_section(broker, **changes: str) -> dict:
    section = {"host": "127.0.0.1", "port": str(broker.tls_port), "username": PI_USER, "password": PI_PASSWORD,
               "tls": "yes", "ca_file": str(broker.ca), "topic_prefix": PREFIX, "timeout": "6"}
    section.update(changes)
    return section


def status(cfg: Path) -> dict:
    done = dreadpi("status", "--json", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def uid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])


# Publishing: every cycle, retained, as Home Assistant's discovery wants it.

def test_a_cycle_publishes_discovery_and_its_state_retained(broker, world_dir):
    clear_retained(broker)
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker, commands="yes"),
                                   "metrics": {"schedule": "*/5 * * * *"}})
    outputs = []
    seen = []
    for _ in range(2):
        result = dreadpi("run", "-c", str(cfg))
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
        seen.append(retained(broker, "homeassistant/#", f"{PREFIX}/#", count=8))
    first, second = seen
    configs = {topic: json.loads(payload) for topic, payload in second.items() if topic.endswith("/config")}
    assert sorted(configs) == sorted(f"homeassistant/{component}/{NODE}/{name}/config" for component, name in [
        ("sensor", "generation"), ("sensor", "mode"), ("sensor", "permitted"), ("sensor", "reason"),
        ("binary_sensor", "problem"), ("sensor", "override_end"), ("select", "control")])
    for topic, payload in configs.items():
        assert payload["unique_id"] == f"{NODE}_{topic.split('/')[3]}"
        assert payload["device"]["identifiers"] == [NODE] and payload["device"]["sw_version"]
        assert payload["device"]["model"] and payload["origin"]["name"] == "dreadpi"
        assert payload["state_topic"] == f"{PREFIX}/state" and payload["name"]
        if "/select/" in topic:
            assert payload["command_topic"] == f"{PREFIX}/command"
            assert payload["options"] == ["automatic", "normal for 1 h", "normal for 2 h", "normal for 4 h"]
            assert payload["availability_topic"] == f"{PREFIX}/listener" and "expire_after" not in payload
            assert '"at": {{ as_timestamp(now()) | int }}' in payload["command_template"]
        else:
            assert payload["expire_after"] == 600  # two intervals of */5
    power = configs[f"homeassistant/sensor/{NODE}/generation/config"]
    assert (power["device_class"], power["unit_of_measurement"]) == ("power", "W")
    assert configs[f"homeassistant/sensor/{NODE}/mode/config"]["device_class"] == "enum"
    assert configs[f"homeassistant/binary_sensor/{NODE}/problem/config"]["device_class"] == "problem"
    assert configs[f"homeassistant/sensor/{NODE}/override_end/config"]["device_class"] == "timestamp"
    assert {t: json.loads(p)["unique_id"] for t, p in first.items() if t.endswith("/config")} == \
        {t: p["unique_id"] for t, p in configs.items()}  # stable from cycle to cycle
    document = json.loads(second[f"{PREFIX}/state"])
    info = status(cfg)
    assert {key: document[key] for key in ("mode", "percent", "watts", "reason", "failsafe", "override", "version")} \
        == {key: info[key] for key in ("mode", "percent", "watts", "reason", "failsafe", "override", "version")}
    assert document["mode"] == "drm3" and document["control"] == "automatic" and document["problem"] is None
    assert document["health"]["consecutive_failsafe"] == 0 and document["override_until"] is None
    assert document["updated_at"] == info["updated_at"]
    everything = json.dumps([first, second]) + "".join(outputs) + error_log(world_dir)
    assert PI_PASSWORD not in everything and "warning" not in error_log(world_dir)

    # Commands turned off: the select goes from Home Assistant (an empty config), the rest stays as it was.
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker), "metrics": {"schedule": "*/5 * * * *"}})
    assert dreadpi("run", "-c", str(cfg)).returncode == 0
    third = retained(broker, "homeassistant/#", count=6)
    assert sorted(third) == sorted(topic for topic in configs if "/select/" not in topic)
    assert all(third[topic] == second[topic] for topic in third)


@pytest.mark.parametrize("how", ["password", "dead", "hanging"])
def test_a_broker_problem_changes_nothing_and_is_logged_once(broker, world_dir, how):
    listener = None
    if how == "dead":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        section = mqtt_section(broker, port=str(listener.getsockname()[1]))
    elif how == "hanging":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel accepts the connection; nobody ever answers
        section = mqtt_section(broker, port=str(listener.getsockname()[1]), timeout="3")
    else:
        section = mqtt_section(broker, password="wrong-password")
    results = {}
    try:
        for name, extra in (("plain", {}), ("mqtt", {"mqtt": section})):
            directory = world_dir / name
            directory.mkdir()
            cfg = write_config(directory, {"script": {"command": "/bin/echo 350"}, **extra})
            steps = []
            for _ in range(2):
                started = time.monotonic()
                result = dreadpi("run", "-c", str(cfg))
                assert time.monotonic() - started < 3 + 3, how  # mqtt.timeout, and the cycle's own time
                info = status(cfg)
                steps.append((result.returncode, info["mode"], info["relays"], info["reason"],
                              (directory / "state" / "sim-pins.json").read_text(), result.stdout[19:]))
            results[name] = steps
    finally:
        if listener:
            listener.close()
    assert results["mqtt"] == results["plain"]
    assert [code for code, *_ in results["plain"]] == [0, 0]
    log = error_log(world_dir / "mqtt")
    why = {"password": "the broker refused the user name or password", "dead": "connection refused",
           "hanging": "no answer in time"}[how]
    assert log.count("warning: mqtt: state not published: mqtt.host 127.0.0.1 port ") == 1, log
    assert why in log and "logged once until it works again" in log
    assert log.count("\n") == 1 and PI_PASSWORD not in log and "wrong-password" not in log
    assert processes_with("run_publish") == []
    shown = status(world_dir / "mqtt" / "dreadpi.cfg")["mqtt"]
    assert shown["by"] == "cycle" and why in shown["problem"] and "wrong-password" not in shown["problem"]
    if how == "password":  # fixed: it says so, once
        cfg = write_config(world_dir / "mqtt", {"script": {"command": "/bin/echo 350"}, "mqtt": mqtt_section(broker)})
        assert dreadpi("run", "-c", str(cfg)).returncode == 0
        assert dreadpi("run", "-c", str(cfg)).returncode == 0
        assert error_log(world_dir / "mqtt").count("mqtt: publishing to the broker works again") == 1


def counted_cycle(cfg: Path) -> str:
    """`dreadpi run` as the Pi runs it, saying its exit code, how many processes it started, and which of the
    heavy modules it imported."""
    code = ("import os, sys; from dreadpi.cli import main; forks = []; real = os.fork\n"
            "def fork():\n    forks.append(1)\n    return real()\n"
            "os.fork = fork; rc = main(['run', '-c', sys.argv[1]]); "
            "print(rc, len(forks), sorted({m.split('.')[0] for m in sys.modules} & {'paho', 'ssl', 'subprocess', "
            "'threading', 'http', 'urllib'}))")
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.append({str(REPO)!r})\n" + code,
                           str(cfg)], capture_output=True, text=True, env={"TZ": "UTC"}, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_a_cycle_with_mqtt_loads_no_paho_or_ssl(broker, world_dir):
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker)})
    assert counted_cycle(cfg) == "0 2 []"  # the collector and the publisher
    assert "warning" not in error_log(world_dir)


def service(cfg: Path) -> subprocess.Popen:
    """The real `dreadpi mqtt-listen`, as root, as its unit starts it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
    return subprocess.Popen([sys.executable, "-m", "dreadpi", "mqtt-listen", "-c", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_where_the_service_runs_a_cycle_hands_it_the_state_and_starts_no_publisher(broker, world_dir):
    clear_retained(broker)
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker), "policy": {"min_dwell": "0"}})
    home = Client(broker, HA_USER, HA_PASSWORD)
    home.subscribe(f"{PREFIX}/#", f"homeassistant/+/{NODE}/+/config")
    process = service(cfg)
    try:
        assert home.wait(lambda found: found.get(f"{PREFIX}/listener") == "online", 10), process.stderr
        time.sleep(0.3)
        assert f"{PREFIX}/state" not in home.latest()  # no cycle has run yet: nothing to show
        connections = broker.log.read_text().count(f"as {NODE}_publish")
        for watts, mode in (("550", "drm3"), ("150", "drm2")):
            home.messages.clear()
            write_config(world_dir, {"mqtt": mqtt_section(broker), "script": {"command": f"/bin/echo {watts}"}})
            assert counted_cycle(cfg) == "0 1 []"  # the collector only: the service publishes
            assert home.wait(lambda found, mode=mode: json.loads(found.get(f"{PREFIX}/state", "{}")).get("mode")
                             == mode, 2)
            document = json.loads(home.latest()[f"{PREFIX}/state"])
            assert document["updated_at"] == status(cfg)["updated_at"]
            time.sleep(0.3)
            sent = sorted({topic for topic, _, _ in home.messages})
            if watts == "550":  # the connection's first: the discovery configs, and the select removed
                assert len(sent) == 8 and f"homeassistant/select/{NODE}/control/config" in sent, sent
            else:  # after that, only what changed
                assert sent == [f"{PREFIX}/state"], sent
        assert broker.log.read_text().count(f"as {NODE}_publish") == connections  # no child of a cycle connected
        assert processes_with("run_publish") == [] and (world_dir / "state" / mqtt.SERVICE_FILE).exists()
        shown = status(cfg)["mqtt"]
        assert (shown["by"], shown["connected"], shown["problem"]) == ("service", True, None) and shown["since"]
        assert "mqtt      the MQTT service publishes, connected since " in dreadpi("status", "-c", str(cfg)).stdout

        command(home, {"option": "normal for 1 h", "at": int(time.time())})  # commands are off: not listened to
        time.sleep(1.0)
        assert override_of(cfg) is None and "command" not in error_log(world_dir)
    finally:
        stop(process)
        home.close()
    assert process.returncode == 0 and not (world_dir / "state" / mqtt.SERVICE_FILE).exists()
    assert counted_cycle(cfg) == "0 2 []"  # the service is gone: the cycle publishes by itself again
    assert "warning" not in error_log(world_dir) and PI_PASSWORD not in process.stderr.read()
    assert status(cfg)["mqtt"] == {"by": "cycle", "connected": None, "problem": None, "since": None}


def test_a_service_file_left_by_a_dead_service_is_not_trusted(world_dir):
    cfg = config.load(str(write_config(world_dir, {"mqtt": {"host": "127.0.0.1"}})))
    (world_dir / "state").mkdir()
    marker = world_dir / "state" / mqtt.SERVICE_FILE
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for text in ("", "{}", "not json", json.dumps({"pid": 1, "started": 0}),
                     json.dumps({"pid": sleeper.pid, "started": 1}),  # its pid, but not its start: a reused pid
                     json.dumps({"pid": 2 ** 22 + 1, "started": 5})):
            marker.write_text(text)
            assert mqtt.hand_off(cfg) is False, text
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


# Commands: Home Assistant's select, through the listener.

@pytest.fixture
def listener(broker, world_dir):
    """A cycle has run; the real `dreadpi mqtt-listen` runs as root, as its unit would; Home Assistant watches."""
    clear_retained(broker)
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker, commands="yes"), "policy": {"min_dwell": "3600"}})
    assert dreadpi("run", "-c", str(cfg)).returncode == 0
    home = Client(broker, HA_USER, HA_PASSWORD)
    home.subscribe(f"{PREFIX}/#")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
    process = subprocess.Popen([sys.executable, "-m", "dreadpi", "mqtt-listen", "-c", str(cfg)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert home.wait(lambda found: found.get(f"{PREFIX}/listener") == "online", 10), process.stderr
        yield cfg, home, process
    finally:
        stop(process)
        home.close()


def override_of(cfg: Path) -> dict | None:
    return status(cfg)["override"]


def stop(process: subprocess.Popen) -> None:
    """Stop a listener as systemd would (SIGTERM), and kill its whole group if it does not go within 5 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def command(home: Client, payload: object) -> None:
    home.publish(f"{PREFIX}/command", payload if isinstance(payload, str) else json.dumps(payload))


def settles(cfg: Path, expected: object, seconds: float = 2.0) -> bool:
    """Whether status shows `expected` as the override (a predicate on it) within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if expected(override_of(cfg)):
            return True
        time.sleep(0.05)
    return False


def test_home_assistant_sets_and_ends_an_override_and_nobody_else_can(broker, world_dir, listener):
    cfg, home, process = listener
    children = processes_with("run_listen")
    assert children and all(uid_of(pid) == NOBODY for pid in children)  # the network side is the sandbox user
    assert not any(PI_PASSWORD.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children)
    assert status(cfg)["mode"] == "drm3" and override_of(cfg) is None
    chosen = int(time.time())
    command(home, {"option": "normal for 2 h", "at": chosen})
    assert settles(cfg, lambda o: o is not None and o["mode"] == "drm0")
    info = status(cfg)
    assert info["mode"] == "drm0" and info["relays"] == [0, 0]
    assert home.wait(lambda found: json.loads(found[f"{PREFIX}/state"])["control"] == "normal for 2 h")
    until = info["override"]["until"]

    refused = [
        (GUEST_USER, {"option": "automatic", "at": int(time.time())}),  # the ACL drops it
        (HA_USER, {"mode": "drm9-unknown", "for": "1h", "at": int(time.time())}),
        (HA_USER, {"mode": "drm0", "for": "9d", "at": int(time.time())}),
        (HA_USER, {"mode": "drm1", "for": "1h", "at": int(time.time())}),  # this board has no drm1
        (HA_USER, {"option": "automatic", "at": int(time.time()) - 600}),  # stale
        (HA_USER, {"option": "automatic", "at": int(time.time()) + 3600}),  # from the future
        (HA_USER, {"option": "normal for 2 h", "at": chosen}),  # re-delivered
        (HA_USER, "automatic"),  # a select without dreadpi's command_template
    ]
    guest = Client(broker, GUEST_USER, GUEST_PASSWORD)
    try:
        for user, payload in refused:
            command(guest if user == GUEST_USER else home, payload)
        time.sleep(1.5)
    finally:
        guest.close()
    assert override_of(cfg)["until"] == until  # unchanged: not even re-applied
    log = error_log(world_dir)
    assert log.count("warning: mqtt: command refused: ") == len(refused) - 1, log  # the guest's never arrived
    for phrase in ("not a mode dreadpi knows", "at most 7 days", "cannot assert drm1", "stale: sent 6",
                   "in the future", "already applied", "not JSON"):
        assert phrase in log, phrase
    assert "drm9-unknown" not in log and "9d" not in log

    command(home, {"option": "automatic", "at": int(time.time())})
    assert settles(cfg, lambda o: o is None)
    assert status(cfg)["mode"] == "drm3"
    command(home, {"option": "normal for 2 h", "at": chosen})  # replayed: older than the last one applied
    time.sleep(1.0)
    assert override_of(cfg) is None
    assert error_log(world_dir).count("already applied, or older than the last command applied") == 2
    for secret in (PI_PASSWORD, HA_PASSWORD):
        assert secret not in error_log(world_dir) and secret not in json.dumps(home.latest())

    process.send_signal(signal.SIGTERM)
    assert process.wait(5) == 0
    assert home.wait(lambda found: found.get(f"{PREFIX}/listener") == "offline", 5)  # its last will
    assert processes_with("run_listen") == []


def test_a_listener_refused_by_the_broker_retries_and_says_so_once(broker, world_dir):
    cfg = write_config(world_dir, {"mqtt": mqtt_section(broker, password="wrong-password")})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
    refusals = broker.log.read_text().count("disconnected, not authorised")
    process = subprocess.Popen([sys.executable, "-m", "dreadpi", "mqtt-listen", "-c", str(cfg)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(4.5)  # the child tries again after 1, 2 and 4 s
        assert process.poll() is None
        shown = status(cfg)["mqtt"]
        assert (shown["by"], shown["connected"]) == ("service", False), shown
        assert shown["problem"].startswith("the broker refused the user name or password"), shown
        assert "mqtt      the MQTT service is not connected (since " in dreadpi("status", "-c", str(cfg)).stdout
    finally:
        stop(process)
    assert process.returncode == 0
    assert broker.log.read_text().count("disconnected, not authorised") - refusals >= 3  # it kept trying
    log = error_log(world_dir)
    assert log.count("warning: mqtt: the listener cannot reach mqtt.host 127.0.0.1 port ") == 1, log
    assert "the broker refused the user name or password" in log and "wrong-password" not in log
    assert processes_with("run_listen") == []


# Both paho APIs: the same child code under the venv's paho 2.x.

@pytest.fixture
def paho2(world_dir) -> str:
    """An interpreter the sandbox user can run with PyPI's paho 2.x and not Debian's 1.6: Debian's python3 in a
    venv of its own (the test venv's interpreter may live where the sandbox user cannot reach), given the test
    venv's paho package."""
    import paho

    venv = world_dir / "paho2"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shutil.copytree(Path(paho.__file__).parent, site / "paho")
    python = str(venv / "bin" / "python3")
    found = subprocess.run([python, "-I", "-c", "import paho.mqtt; print(paho.mqtt.__version__)"], text=True,
                           capture_output=True, check=True).stdout
    assert found.startswith("2."), found
    return python


def test_the_child_works_with_paho_2_too(broker, world_dir, paho2):
    clear_retained(broker)
    cfg_path = write_config(world_dir, {"mqtt": mqtt_section(broker, port=str(broker.port), tls="no",
                                                             ca_file=None, commands="yes")})
    assert dreadpi("run", "-c", str(cfg_path)).returncode == 0  # Debian's paho 1.6, plain TCP this time
    cfg = config.load(str(cfg_path))
    saved, _ = state.load(cfg.state_dir)
    saved.reason = "published by paho 2"
    assert mqtt.deliver(cfg, mqtt.messages(cfg, saved, time.time(), HOST), python=paho2) is None
    assert json.loads(retained(broker, f"{PREFIX}/state", count=1)[f"{PREFIX}/state"])["reason"] == \
        "published by paho 2"
    wrong = cfg._replace(mqtt=cfg.mqtt._replace(password="wrong-password"))
    assert "refused the user name or password" in mqtt.deliver(wrong, [], python=paho2)

    home = Client(broker, HA_USER, HA_PASSWORD)
    home.subscribe(f"{PREFIX}/listener", f"{PREFIX}/state")
    code = ("import sys; from dreadpi import config, mqtt_listen\n"
            "sys.exit(mqtt_listen.serve(config.load(sys.argv[1]), lambda line: print(line, flush=True), "
            "python=sys.argv[2]))")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
    process = subprocess.Popen([sys.executable, "-c", code, str(cfg_path), paho2], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert home.wait(lambda found: found.get(f"{PREFIX}/listener") == "online", 10)
        command(home, {"option": "normal for 1 h", "at": int(time.time())})
        assert settles(cfg_path, lambda o: o is not None and o["mode"] == "drm0")
        # The override's cycle handed its state to the service, whose paho 2 child published it.
        assert home.wait(lambda found: json.loads(found.get(f"{PREFIX}/state", "{}")).get("control")
                         == "normal for 1 h", 3)
    finally:
        stop(process)
        home.close()
    assert processes_with("run_listen") == []


# The parts, without a broker.

def settings(text: str = "") -> config.Config:
    host = "" if text.startswith("host =") else "host = broker.lan\n"
    return config.parse_text(f"[script]\ncommand = /bin/echo 1\n[mqtt]\n{host}{text}")


def test_mqtt_settings_and_their_defaults():
    assert config.parse_text("[script]\ncommand = /bin/echo 1\n").mqtt.host == ""  # off
    cfg = settings()
    assert cfg.mqtt == config.MqttSettings("broker.lan", 8883, "", "", True, "", f"dreadpi/{HOST}", "homeassistant",
                                           10.0, False)
    assert settings("tls = no\n").mqtt.port == 1883
    assert settings("tls = no\nport = 1884\n").mqtt.port == 1884


@pytest.mark.parametrize(("line", "expected"), [
    ("port = 0", "mqtt.port: must be at least 1, got 0"),
    ("port = 65536", "mqtt.port: must be at most 65535"),
    ("tls = maybe", "mqtt.tls: expected yes or no"),
    ("ca_file = /nonexistent/ca.pem", "mqtt.ca_file: no such file: /nonexistent/ca.pem"),
    ("topic_prefix = dreadpi/+", "mqtt.topic_prefix: expected topic levels"),
    ("topic_prefix = dreadpi/#", "mqtt.topic_prefix: expected topic levels"),
    ("topic_prefix = /dreadpi", "mqtt.topic_prefix: expected topic levels"),
    ("discovery_prefix = home assistant", "mqtt.discovery_prefix: expected topic levels"),
    ("host = broker lan", "mqtt.host: expected a host name or address"),
    ("password = S3cretNotShown", "mqtt.password: given without mqtt.username"),
    ("prefix = x", "mqtt.prefix: unknown key"),
])
def test_bad_mqtt_settings_name_the_key(line, expected):
    with pytest.raises(ConfigError) as caught:
        settings(line + "\n")
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems
    assert "S3cretNotShown" not in str(caught.value)


def test_the_password_is_hidden_wherever_text_is_redacted():
    from dreadpi.reports import notify

    cfg = settings("username = pi\npassword = pw-Hidden123\n")
    assert "pw-Hidden123" in notify.secrets(cfg)
    assert "pw-Hidden123" not in json.dumps(mqtt.messages(cfg, state.State(reason="it said pw-Hidden123"), 1e9, "pi"))


def test_expire_after_is_two_schedule_intervals():
    assert mqtt.expire_after(settings()) == 1800  # unknown schedule: the role's 15 minutes
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n[metrics]\nschedule = */10 5-21 * * *\n")
    assert mqtt.expire_after(cfg) == 1200


@pytest.mark.parametrize(("override", "shown"), [
    (None, "automatic"),
    ({"mode": "drm0", "until": 1e9 + 1800}, "normal for 1 h"),
    ({"mode": "drm0", "until": 1e9 + 3 * 3600}, "normal for 4 h"),
    ({"mode": "drm0", "until": 1e9 - 1}, "automatic"),  # ended
    ({"mode": "drm0", "until": 1e9 + 5 * 3600}, None),  # longer than any option: unknown, not a wrong option
    ({"mode": "drm2", "until": 1e9 + 600}, None),
])
def test_the_select_shows_the_override(override, shown):
    assert mqtt.control(override, 1e9) == shown


NOW = 1_800_000_000


def request(mode: str = "drm0", duration: str | None = "2h", at: int = NOW) -> dict:
    return {"event": "command", "mode": mode, "for": duration, "at": at}


@pytest.mark.parametrize(("given", "why"), [
    (request(mode="drm1"), "cannot assert drm1"),
    (request(mode="drm9"), "mode must be one of"),
    (request(duration="9d"), "at most 7 days"),
    (request(duration=None), "say how long"),
    (request(mode="clear", duration="1h"), "takes no --for"),
    (request(at=NOW - 301), "stale"),
    (request(at=NOW + 31), "in the future"),
    ({**request(), "at": True}, "no valid time"),
    ({**request(), "at": "1800000000"}, "no valid time"),
    ({**request(), "extra": 1}, "not a command"),
    ([1, 2], "not a command"),
])
def test_the_root_side_refuses_what_it_would_not_do(given, why):
    with pytest.raises(mqtt_listen.Refused, match=why) as caught:
        mqtt_listen.validate(settings(), given, NOW)
    assert "9d" not in str(caught.value) and "drm9" not in str(caught.value)


def test_the_root_side_accepts_a_command_once():
    wanted, at, key = mqtt_listen.validate(settings(), request(), NOW)
    assert wanted == {"mode": "drm0", "until": NOW + 7200} and (at, key) == (NOW, "drm0 2h")
    assert mqtt_listen.validate(settings(), request(mode="clear", duration=None), NOW)[0] is None
    saved = state.State()
    mqtt_listen.accept(at, key)(saved)
    assert (saved.mqtt_command_at, saved.mqtt_command) == (NOW, "drm0 2h")
    for again in (mqtt_listen.accept(NOW, "drm0 2h"), mqtt_listen.accept(NOW - 1, "clear")):
        with pytest.raises(mqtt_listen.Refused, match="already applied"):
            again(saved)
    mqtt_listen.accept(NOW, "clear")(saved)  # another command in the same second is a new one


OPTIONS = {option: [mode, duration] for option, mode, duration in mqtt.CONTROL}


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"option": "normal for 2 h", "at": 1800000000}', {"mode": "drm0", "for": "2h", "at": 1800000000}),
    (b'{"option": "automatic", "at": 1800000000.7}', {"mode": "clear", "for": None, "at": 1800000000}),
    (b'{"mode": "drm3", "for": "1h30m", "at": 1}', {"mode": "drm3", "for": "1h30m", "at": 1}),
    (b'{"option": "normal for 3 h", "at": 1}', "not one of the select's options"),
    (b'{"option": "automatic"}', "no time"),
    (b'{"option": "automatic", "at": 1, "x": 2}', "not one of the select's options"),
    (b'{"mode": "drm0", "for": "2 hours", "at": 1}', "not a duration"),
    (b'{"mode": "drm0; rm -rf /", "at": 1}', "not a mode dreadpi knows"),
    (b"automatic", "not JSON"),
    (b"\xff", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"option": "automatic", "at": 1, "pad": "' + b"x" * 600 + b'"}', "longer than a command"),
])
def test_the_child_passes_on_only_commands_of_the_right_shape(payload, expected):
    if isinstance(expected, dict):
        assert fetch_mqtt.command(payload, OPTIONS) == expected
    else:
        with pytest.raises(fetch_mqtt.Failed, match=expected):
            fetch_mqtt.command(payload, OPTIONS)


def test_a_stop_waits_for_the_command_being_applied(world_dir, monkeypatch):
    cfg = config.load(str(write_config(world_dir, {"mqtt": {"host": "127.0.0.1", "commands": "yes"}})))
    lines: list = []
    service = mqtt_listen.Service(cfg, lines.append)

    def applying(cfg, event) -> str:  # noqa: ANN001
        service.stop(signal.SIGTERM, None)  # systemd stops the service meanwhile
        lines.append("cycle finished")
        return "applied"

    monkeypatch.setattr(mqtt_listen, "handle", applying)
    with pytest.raises(mqtt_listen.Stop):
        service.event(b'{"event": "command", "mode": "clear", "for": null, "at": 1}')
    assert lines == ["cycle finished", "applied"]


def test_what_the_child_says_is_never_repeated_unless_it_is_one_of_its_phrases(world_dir):
    cfg = config.load(str(write_config(world_dir, {"mqtt": {"host": "127.0.0.1", "commands": "yes"}})))
    (world_dir / "log").mkdir()
    lines: list = []
    service = mqtt_listen.Service(cfg, lines.append)
    for line in (b'{"event": "refused", "why": "not JSON"}', b'{"event": "refused", "why": "<img src=x> {\\"a\\"}"}',
                 b"Traceback (most recent call last):", b"\xff", b'{"event": "command"}'):
        service.event(line)
    assert [line.split("refused: ")[1] for line in lines] == ["not JSON", "not a command", "not an event",
                                                             "not an event", "not a command"]
