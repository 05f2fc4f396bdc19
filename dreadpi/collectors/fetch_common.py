"""HTTP for collectors, inside the sandbox: bounded in time and size, and every failure one plain sentence.

This module and the `fetch_*` modules run in the sandboxed child as the unprivileged user, under
`/usr/bin/python3 -I`, with nothing but the standard library and Debian's python3-requests. They never import
`dreadpi`: the root parent sends their source on stdin (see `dreadpi.collectors.api`), so the child needs no
readable checkout and no PYTHONPATH. The child prints one JSON object and exits 0; the parent, not the child,
decides what a result means. Messages never contain a secret or a URL with a key in it, because they end up
in logs and `dreadpi status`; that is why exceptions from requests are translated here, never passed on.
"""

from __future__ import annotations

import json
import sys
import time

MAX_BODY = 256 * 1024  # the largest real answer (Envoy production.json with details) is a few KiB
CONNECT_TIMEOUT = 10.0


class Failure(Exception):
    """A failure with a message fit for the error log: names the cause, holds no secret. `problem` is its class
    (auth, quota, unreachable, bad-answer, config; see dreadpi.errors.PROBLEMS)."""

    def __init__(self, message: str, problem: str = "bad-answer") -> None:
        super().__init__(message)
        self.problem = problem


def status_problem(status: int) -> str:
    """The class of an HTTP error status: what a person has to do about it differs."""
    if status in (401, 403):
        return "auth"
    if status in (409, 429):
        return "quota"
    if status >= 500:
        return "unreachable"
    return "bad-answer"


class Deadline:
    """The child's whole time budget; it ends a little before the sandbox would kill it, so the user sees why.

    Socket timeouts bound each read, not the whole answer: a server dripping a byte a second never trips them.
    So an interval timer also interrupts whatever is blocking when the budget is spent.
    """

    def __init__(self, seconds: float) -> None:
        import signal

        self.seconds = max(1.0, seconds)
        self.end = time.monotonic() + self.seconds

        def expired(signum: int, frame: object) -> None:
            raise Failure(f"gave up after {self.seconds:g} s", "unreachable")

        signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds + 0.2)

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise Failure(f"gave up after {self.seconds:g} s", "unreachable")
        return remaining


class Answer:
    """A complete HTTP answer: status, lower-cased headers, the body (bounded), and the content type."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def first_line(self, limit: int = 160) -> str:
        lines = self.text().strip().splitlines()
        return lines[0][:limit] if lines else ""

    def json(self, what: str) -> object:
        if self.content_type != "application/json" and self.body.lstrip()[:1] not in (b"{", b"["):
            shown = self.content_type or "no content type"
            raise Failure(f"{what} answered HTTP {self.status} with {shown}, not JSON")
        try:
            return json.loads(self.body)
        except ValueError:
            raise Failure(f"{what} answered HTTP {self.status} with broken JSON") from None


def session(adapter: object = None) -> object:
    """A requests session that ignores the environment (proxies, netrc) and never retries by itself."""
    import requests
    import requests.adapters

    s = requests.Session()
    s.trust_env = False
    s.headers["User-Agent"] = "dreadpi"
    mounted = adapter if adapter is not None else requests.adapters.HTTPAdapter(max_retries=0)
    s.mount("https://", mounted)
    s.mount("http://", requests.adapters.HTTPAdapter(max_retries=0))
    return s


def fetch(s: object, method: str, url: str, host: str, deadline: Deadline, headers: dict | None = None,
          verify: bool = True) -> Answer:
    """One request, no redirects (they could carry credentials elsewhere), body read to at most MAX_BODY."""
    import requests

    try:
        left = deadline.left()
        response = s.request(method, url, headers=headers or {}, stream=True, allow_redirects=False, verify=verify,
                             timeout=(min(CONNECT_TIMEOUT, left), left))
        try:
            body = bytearray()
            for chunk in response.iter_content(16384):
                body += chunk
                if len(body) > MAX_BODY:
                    raise Failure(f"{host} sent more than {MAX_BODY // 1024} KiB; not a real answer")
                deadline.left()
            headers_seen = {key.lower(): value for key, value in response.headers.items()}
            return Answer(response.status_code, headers_seen, bytes(body))
        finally:
            response.close()
    except Failure:
        raise
    except requests.exceptions.SSLError as err:
        raise Failure(f"TLS with {host} failed: {_tls_cause(err)}", "unreachable") from None
    except requests.exceptions.ConnectTimeout:
        raise Failure(f"no connection to {host} within {min(CONNECT_TIMEOUT, deadline.seconds):g} s",
                      "unreachable") from None
    except (requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError) as err:
        if _caused_by(err, TimeoutError) or isinstance(err, requests.exceptions.ReadTimeout):
            raise Failure(f"no answer from {host} within {deadline.seconds:g} s", "unreachable") from None
        raise Failure(f"{host} broke off its answer", "unreachable") from None
    except requests.exceptions.ConnectionError as err:
        raise Failure(f"cannot connect to {host}: {_connect_cause(err)}", "unreachable") from None
    except requests.exceptions.RequestException as err:
        raise Failure(f"request to {host} failed ({err.__class__.__name__})", "unreachable") from None


def _chain(err: BaseException) -> list:
    """Every exception behind `err`: requests and urllib3 wrap the real cause several layers deep."""
    seen: list = []
    todo = [err]
    while todo and len(seen) < 20:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return seen


def _caused_by(err: BaseException, kind: type) -> bool:
    return any(isinstance(e, kind) for e in _chain(err))


def _connect_cause(err: BaseException) -> str:
    import socket

    for cause in _chain(err):
        if isinstance(cause, socket.gaierror):
            return "the name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.strerror or f"error {cause.errno}"
    text = " ".join(str(e) for e in _chain(err))
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "the name does not resolve"
    if "refused" in text:
        return "connection refused"
    return "connection failed"


def _tls_cause(err: BaseException) -> str:
    import ssl

    for cause in _chain(err):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({cause.verify_message})"
    text = " ".join(str(e) for e in _chain(err))
    if "Fingerprints did not match" in text:
        return "certificate fingerprint does not match the pinned one"
    return "handshake failed"


def fingerprint_of(host: str, port: int, deadline: Deadline) -> str:
    """SHA-256 of the peer's certificate (DER), over a connection that sends nothing but the handshake."""
    import hashlib
    import socket
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=min(CONNECT_TIMEOUT, deadline.left())) as raw:
            raw.settimeout(deadline.left())
            with context.wrap_socket(raw, server_hostname=None if _is_ip(host) else host) as tls:
                der = tls.getpeercert(binary_form=True)
    except socket.timeout:
        raise Failure(f"no answer from {host} within {deadline.seconds:g} s", "unreachable") from None
    except ssl.SSLError:
        raise Failure(f"TLS with {host} failed: handshake failed", "unreachable") from None
    except OSError as err:
        raise Failure(f"cannot connect to {host}: {_connect_cause(err)}", "unreachable") from None
    if not der:
        raise Failure(f"{host} presented no certificate")
    return hashlib.sha256(der).hexdigest()


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def number(value: object, what: str) -> float:
    """A finite JSON number, or a Failure naming the field: strings and booleans are not readings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
        raise Failure(f"{what} is not a number ({str(value)[:40]!r})")
    return float(value)


def main(work: object) -> None:
    """Read the settings the parent sent, run `work(settings, result)`, print the result. Always exit 0:
    the result says what went wrong, so a traceback (which could quote a URL) never reaches the parent."""
    settings = json.loads(sys.stdin.readline())
    result: dict = {"warnings": []}
    try:
        work(settings, result)  # type: ignore[operator]
    except Failure as err:
        result["error"] = str(err)
        result["problem"] = err.problem
    except MemoryError:
        result["error"] = "ran out of memory (collector.memory_limit)"
    except ImportError as err:
        result["error"] = f"cannot import {err.name}: install Debian's python3-{err.name}"
    except Exception as err:  # noqa: BLE001 (a message, never a traceback: see above)
        result["error"] = f"internal error in the collector ({err.__class__.__name__})"
    sys.stdout.write(json.dumps(result, allow_nan=False))
    sys.stdout.flush()
