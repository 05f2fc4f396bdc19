"""Send one notification with Apprise, inside the sandbox (see dreadpi.reports.notify for how this runs).

Runs as the unprivileged user under Debian's `/usr/bin/python3 -I`, with an empty environment and cwd `/`,
needing nothing but the standard library and Debian's apprise package (which needs no HOME, config or cache
directory when given URLs directly). It never imports `dreadpi`: the root parent sends this source on stdin,
then one line of JSON: {"urls": [...], "title": ..., "body": ..., "type": info|success|warning|failure,
"budget": seconds}. It prints one JSON object, {"sent": [positions], "failed": [[position, why]]}, plus
"error" when it could not try at all; `why` is one of a few fixed phrases, never a URL, a server's answer or
a traceback, because the URLs hold secrets and the parent logs what it prints.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys


class TimeUp(BaseException):
    """The budget is spent. A BaseException: Apprise catches Exception around each service it calls."""


class Capture(logging.Handler):
    """Apprise's own log lines for the service being tried: read here to classify a failure, never passed on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage()
            # Warnings say what failed; of the debug lines only the exception's text helps (the rest are URLs
            # and payloads, whose words would only confuse the classification).
            if record.levelno >= logging.WARNING or "Exception:" in line[:40]:
                self.lines.append(line)
        except Exception:  # noqa: BLE001, S110 (a log line that cannot be formatted says nothing)
            pass


_CAUSES = (
    (("connection refused", "errno 111"), "connection refused"),
    (("timed out", "timeout"), "no answer in time"),
    (("name or service not known", "temporary failure in name resolution", "nameresolution",
      "no address associated"), "the name does not resolve"),
    (("certificate verify failed", "ssl", "tls"), "TLS failed"),
    (("network is unreachable", "no route to host"), "network unreachable"),
    (("connection", "socket"), "connection failed"),
)


def why(lines: list) -> str:
    """A fixed phrase for what went wrong, from Apprise's log lines (which may quote a URL: never returned)."""
    text = " ".join(lines)
    status = re.search(r"error=(\d{3})\b", text)
    if status:
        return f"the service answered HTTP {status.group(1)}"
    lower = text.lower()
    for words, phrase in _CAUSES:
        if any(word in lower for word in words):
            return phrase
    return "not accepted by the service"


def send(job: dict, result: dict) -> None:
    import apprise

    capture = Capture()
    logger = logging.getLogger("apprise")
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # nothing reaches stderr, which the parent would log
    for position, url in enumerate(job["urls"], 1):
        del capture.lines[:]
        # One Apprise object a URL: the result is per service, and nothing is sent in parallel threads, so the
        # budget's alarm interrupts whichever request is blocking.
        service = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not service.add([url]):
            result["failed"].append([position, "Apprise does not understand this URL (see its service's URL form)"])
        elif service.notify(body=job["body"], title=job["title"], notify_type=job["type"]):
            result["sent"].append(position)
        else:
            result["failed"].append([position, why(capture.lines)])


def run() -> None:
    job = json.loads(sys.stdin.readline())
    budget = max(1.0, float(job["budget"]))
    result: dict = {"sent": [], "failed": []}

    def expired(signum: int, frame: object) -> None:
        raise TimeUp

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        send(job, result)
    except TimeUp:
        tried = set(result["sent"]) | {position for position, _ in result["failed"]}
        result["failed"] += [[position, f"gave up after {budget:g} s"]
                             for position in range(1, len(job["urls"]) + 1) if position not in tried]
    except ImportError:
        result["error"] = "cannot import apprise: install Debian's apprise package"
    except MemoryError:
        result["error"] = "ran out of memory (collector.memory_limit)"
    except Exception as err:  # noqa: BLE001 (a message, never a traceback: see above)
        result["error"] = f"internal error in the sender ({err.__class__.__name__})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
