"""A real MQTT broker for the tests: Debian's mosquitto, started by the test on loopback, never as a service.

Installing the package must not leave a broker running or starting at boot on the test machine, so (as
tests/promtool.py does for prometheus) its unit is masked first and a temporary policy-rc.d refuses every start
while apt runs. `systemctl unmask mosquitto` undoes the mask if you want the service. The test's broker runs as
a child process of the test (`mosquitto -c CONF`), with a password file, an ACL and TLS from the test CA, and is
killed at the end.

The publishing and listening children run under Debian's `/usr/bin/python3 -I` with Debian's python3-paho-mqtt
(bookworm: 1.6), as on a Pi, so that package is installed here too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from tests import debian
from tests.conftest import require_root

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def _missing() -> list:
    missing = [] if os.path.exists(MOSQUITTO) and os.path.exists(MOSQUITTO_PASSWD) else ["mosquitto"]
    check = subprocess.run(["/usr/bin/python3", "-I", "-c", "import paho.mqtt.client"], capture_output=True)
    return missing + ([] if check.returncode == 0 else ["python3-paho-mqtt"])


def install() -> None:
    """mosquitto and python3-paho-mqtt (root), the broker never started as a service, now or at boot."""
    missing = _missing()
    if missing:
        require_root()
        debian.install(missing, units=("mosquitto.service",))


def certificate(certs, directory: Path, name: str, san: str) -> tuple:  # noqa: ANN001 (apiworld.Certificates)
    """(ca, cert, key) in `directory` for a broker called `name`: a certificate for `san` (e.g.
    "IP:127.0.0.1,DNS:localhost") signed by the test CA, and a copy of that CA."""
    cert, key, csr, ext = (directory / f"broker.{suffix}" for suffix in ("pem", "key", "csr", "ext"))
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
                    "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey",
                    str(certs.dir / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
                    "-out", str(cert)], check=True, capture_output=True)
    ca = directory / "ca.pem"
    shutil.copy(certs.ca, ca)
    return ca, cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1 (and on `addresses`, e.g. the host side of simulated Pis' links): `port` plain
    (1883-style) and `tls_port` (8883-style, `cert` signed by the test CA), `users` {name: password} in a
    mosquitto_passwd file, and `acl` as the acl_file's text."""

    def __init__(self, directory: Path, users: dict, acl: str, ca: Path, cert: Path, key: Path,
                 addresses: tuple = (), tls_port: int | None = None) -> None:
        self.dir = directory
        self.port, self.tls_port = free_port(), tls_port or free_port()
        passwords = directory / "passwd"
        passwords.write_text("")
        for user, password in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True, capture_output=True)
        (directory / "acl").write_text(acl)
        conf = directory / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\nallow_anonymous false\npersistence false\nlog_dest stderr\n"
            f"password_file {passwords}\nacl_file {directory / 'acl'}\n"
            + "".join(f"listener {self.port} {address}\n"
                      f"listener {self.tls_port} {address}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                      for address in ("127.0.0.1", *addresses)))
        for path in directory.iterdir():
            path.chmod(0o644)  # the broker drops to its own user before it reads some of them
        self.log = directory / "mosquitto.log"
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            try:
                for port in (self.port, self.tls_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"mosquitto did not listen: {self.log.read_text()}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class Client:
    """A test-side MQTT client (paho 2.x from the venv): Home Assistant, or another user of the broker."""

    def __init__(self, broker, user: str, password: str) -> None:
        import paho.mqtt.client as paho

        self.messages: list = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if rc == 0 else None
        self.client.on_message = self._received
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(5), f"{user} could not connect"

    def _received(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode(), message.retain))

    def subscribe(self, *topics: str) -> None:
        for topic in topics:
            self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def latest(self) -> dict:
        with self.lock:
            return {topic: payload for topic, payload, _ in self.messages}

    def wait(self, predicate, timeout: float = 5.0) -> bool:  # noqa: ANN001
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self.latest()):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
