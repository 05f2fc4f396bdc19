"""Real HTTPS servers on loopback that play PVOutput, Enlighten and an IQ Gateway, and a way to run the real
`dreadpi` so that the cloud names resolve to them and their certificate authority is trusted.

The collectors' URLs are fixed in code, so the tests change the world, not the code: `dreadpi` runs in a
private mount namespace (unshare) where /etc/hosts maps pvoutput.org and api.enphaseenergy.com to loopback
addresses and the system CA bundle is a test CA made here with openssl. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # what Debian's python3-requests trusts
ADDRESSES = {"pvoutput.org": "127.77.0.1", "api.enphaseenergy.com": "127.77.0.2", "envoy.test": "127.77.0.3"}


def ensure_debian_requests() -> None:
    """The collectors' child runs Debian's /usr/bin/python3 with python3-requests, as on a Pi."""
    check = subprocess.run(["/usr/bin/python3", "-c", "import requests"], capture_output=True)
    if check.returncode == 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "python3-requests"],
                   check=True, capture_output=True, env=env)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Certificates:
    """A test CA with a certificate for each cloud name, and self-signed gateway certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dreadpi test CA",
                 "-keyout", str(directory / "ca.key"), "-out", str(self.ca),
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        for name in ("pvoutput.org", "api.enphaseenergy.com"):
            self._signed(name)
        self.bundle = directory / "bundle.pem"
        shutil.copy(self.ca, self.bundle)

    def _signed(self, name: str) -> None:
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.dir / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))

    def pair(self, name: str) -> tuple:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def self_signed(self, label: str) -> tuple:
        """A gateway-style self-signed certificate (a new key each label)."""
        cert, key = self.dir / f"gw-{label}.pem", self.dir / f"gw-{label}.key"
        if not cert.exists():
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=envoy",
                     "-keyout", str(key), "-out", str(cert))
        return cert, key

    @staticmethod
    def fingerprint(cert: Path) -> str:
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        import hashlib

        return hashlib.sha256(der).hexdigest()


class Request:
    def __init__(self, method: str, path: str, headers: dict, body: bytes) -> None:
        parsed = urllib.parse.urlsplit(path)
        self.raw_path = path
        self.method = method
        self.path = parsed.path
        self.query = dict(urllib.parse.parse_qsl(parsed.query))
        self.headers = headers
        self.body = body


class Reply:
    """What a route answers: status, content type, body; `delay` before answering, `drip` seconds per byte."""

    def __init__(self, status: int = 200, body: str | bytes | dict = b"", content_type: str = "text/plain",
                 headers: dict | None = None, delay: float = 0.0, drip: float = 0.0) -> None:
        if isinstance(body, dict):
            body, content_type = json.dumps(body), content_type if content_type != "text/plain" else "application/json"
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or {}
        self.delay = delay
        self.drip = drip


def hang() -> Reply:
    """An answer that never comes (until the server stops): a gateway in its nightly reset."""
    return Reply(delay=3600)


class ApiServer:
    """An HTTPS server on ADDRESSES[name]:443; `routes[path](request) -> Reply`; every request is recorded.
    Without a certificate it is a plain HTTP server on port 80, as gateways with firmware before 7 are."""

    def __init__(self, name: str, cert: Path | None, key: Path | None, routes: dict) -> None:
        self.name = name
        self.routes = routes
        self.requests: list = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length) if length else b"")
                server.requests.append(request)
                route = server.routes.get(request.path)
                reply = route(request) if route else Reply(404, "Not found")
                if reply.delay and server.stopping.wait(reply.delay):
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for header, value in reply.headers.items():
                    self.send_header(header, value)
                self.end_headers()
                if reply.drip:
                    for byte in reply.body:
                        if server.stopping.wait(reply.drip):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                else:
                    self.wfile.write(reply.body)

            do_GET = do_POST = _serve  # noqa: N815

        if cert:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(str(cert), str(key))
        self.httpd = ThreadingHTTPServer((ADDRESSES[name], 443 if cert else 80), Handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.allow_reuse_address = True
        self.httpd.server_bind()
        self.httpd.server_activate()
        if cert:
            self.httpd.socket = self.context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def calls(self, path: str) -> list:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class World:
    """Runs the real `dreadpi` with the cloud names on loopback and the test CA as the only trusted one."""

    def __init__(self, directory: Path, certs: Certificates) -> None:
        self.hosts = directory / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in ADDRESSES.items()))
        self.certs = certs
        for path in (self.hosts, certs.bundle):
            path.chmod(0o644)

    def argv(self, *args: str) -> list:
        script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" ' + CA_BUNDLE + ' && shift 2 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                str(self.hosts), str(self.certs.bundle), sys.executable, "-m", "dreadpi", *args]

    def dreadpi(self, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=env)

    def start(self, *args: str) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": "UTC"}
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def status(world: World, config: Path) -> dict:
    done = world.dreadpi("status", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def plain_server(name: str, routes: dict) -> ApiServer:
    """A plain HTTP server on ADDRESSES[name]:80: a gateway with firmware before 7."""
    return ApiServer(name, None, None, routes)


class Digest:
    """HTTP digest authentication (RFC 7616, MD5, qop=auth) as an old gateway guards a route with it: a 401 with
    a fresh challenge unless the request proves one of `users` ({name: password}). `accepted` lists who got in."""

    realm = "enphaseenergy.com"

    def __init__(self, users: dict, reply: Callable[[Request], Reply]) -> None:
        self.users = users
        self.reply = reply
        self.nonces: set = set()
        self.accepted: list = []

    def __call__(self, request: Request) -> Reply:
        fields = _digest_fields(request.headers.get("authorization", ""))
        user = fields.get("username", "")
        if fields.get("nonce") in self.nonces and user in self.users and fields.get("response") == self._expected(
                request, fields, self.users[user]):
            self.accepted.append(user)
            return self.reply(request)
        nonce = os.urandom(12).hex()
        self.nonces.add(nonce)
        challenge = f'Digest realm="{self.realm}", qop="auth", nonce="{nonce}", opaque="{os.urandom(4).hex()}"'
        return Reply(401, "<html><body>401 Unauthorized</body></html>", content_type="text/html",
                     headers={"WWW-Authenticate": challenge})

    def _expected(self, request: Request, fields: dict, password: str) -> str:
        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        if fields.get("uri") != request.raw_path or fields.get("qop") != "auth":
            return "no"
        ha1 = md5(f"{fields['username']}:{self.realm}:{password}")
        ha2 = md5(f"{request.method}:{fields['uri']}")
        return md5(f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")


def _digest_fields(header: str) -> dict:
    if not header.lower().startswith("digest "):
        return {}
    return urllib.request.parse_keqv_list(urllib.request.parse_http_list(header[7:]))
