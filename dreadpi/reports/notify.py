"""Push notifications for a household: a message when dreadpi starts failing, when it works again, when its
credential is about to expire, and when the relays cannot be driven. Never one a cycle.

`plan` is pure: from the state before the cycle and the cycle's outcome it decides whether there is anything to
say, and what the state should remember of it (`notified_problem`: the problem a failure message was delivered
for, until the recovery is announced). `deliver` sends it with Apprise in the collector sandbox, as the
unprivileged user, within `notify.timeout`: the URLs travel on stdin, never in argv, and nothing the child prints
is believed without checking. A message that cannot be delivered is a warning in the error log; a failure or
relay message is tried again next cycle, a recovery or credential message is not (the next failure, or
tomorrow's warning, will be).
"""

from __future__ import annotations

import json
import os
import re

PYTHON = "/usr/bin/python3"  # Debian's, with Debian's apprise package; the role installs both
HEADROOM = 2.0  # seconds the child's own deadline leaves before the sandbox's kill, so it can say why
_BOOT = ("import json,sys\ng={'__name__':'fetch_notify'}\n"
         "exec(compile(json.loads(sys.stdin.readline()),'fetch_notify.py','exec'),g)\ng['run']()\n")

# What a person does about each class of problem (dreadpi.errors.PROBLEMS); the reason says the specifics.
HINTS = {
    "auth": "the data source refused dreadpi's credentials: renew them as the reason says, then run "
            "dreadpi check-config",
    "quota": "the data source's request limit is used up: run dreadpi less often or raise the quota; it recovers "
             "by itself when the limit resets",
    "unreachable": "the data source did not answer: check the network, the Wi-Fi and that the source is powered; "
                   "dreadpi recovers by itself when it answers again",
    "bad-answer": "the data source answered with something dreadpi cannot use: check the collector's settings and "
                  "the source itself",
    "stale": "the latest reading is too old (or dated in the future): check that the source still reports, and "
             "the Pi's clock",
    "relay": "check the relay board's power and wiring, and what dreadpi check-config says about the board",
    "config": "a setting is wrong: correct it in /etc/dreadpi/dreadpi.cfg, then run dreadpi check-config",
}
# Patterns as text, compiled on first use: most cycles have nothing to say, and must not pay for them.
_FAILSAFE_PREFIX = r"failsafe \([^)]*\): "
_HOSTNAME = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # a host name or address: not a secret


class Notice:
    """A message (`kind`: Apprise's info, success, warning or failure) and the state's `notified_problem` once
    it is delivered (`notified`) or when it is not (`unsent`). A plain class: a namedtuple costs every cycle."""

    __slots__ = ("title", "body", "kind", "notified", "unsent")

    def __init__(self, title: str, body: str, kind: str, notified: str | None, unsent: str | None) -> None:
        self.title = title
        self.body = body
        self.kind = kind
        self.notified = notified
        self.unsent = unsent


def _when(epoch: float | None) -> str:
    from dreadpi import clock

    return clock.human(clock.local(epoch)) if epoch else "an unknown time"


def _mode(mode: str | None) -> str:
    from dreadpi import modes

    return f"{mode} ({modes.PERCENT[mode]} %)" if mode in modes.PERCENT else "no mode yet"


def plan(saved, outcome, after: int, relay_error: str | None = None, host: str = "") -> Notice | None:  # noqa: ANN001
    """What to tell the household after this cycle, or None (most cycles). `saved` is the state.State before
    the cycle, `outcome` the cycle.Outcome (its `state` the state saved after it), `relay_error` the error when
    the relays could not be driven. `deliver` scrubs the secrets out before anything is sent."""
    new, decision = outcome.state, outcome.decision
    outstanding = saved.notified_problem
    parts: list = []  # (kind, headline, text), most important first
    notified = unsent = outstanding
    if relay_error is not None:
        if outstanding != "relay":
            parts.append(("failure", "relays not driven",
                          f"The relays could not be driven: {relay_error.rstrip('.')}. They stay as they were; "
                          f"dreadpi wanted {_mode(decision.mode)}: {decision.reason}.\nWhat to do: {HINTS['relay']}."))
            notified = "relay"
    elif new.consecutive_failsafe >= after and outstanding in (None, "relay"):
        problem = new.problem or "stale"
        cause = re.sub(_FAILSAFE_PREFIX, "", new.reason, count=1).rstrip(".")
        parts.append(("failure", f"failing ({problem})",
                      f"No usable reading for {new.consecutive_failsafe} cycles in a row, since "
                      f"{_when(new.failing_since)}: {cause}.\nWhat to do: {HINTS.get(problem, HINTS['bad-answer'])}."
                      f"\nMeanwhile the failsafe holds the air conditioner in {_mode(new.mode)}."))
        notified = problem
    elif outstanding is not None and not new.failsafe and new.problem is None:
        what = "The relays are driven again" if outstanding == "relay" else "Readings are usable again"
        parts.append(("success", "working again",
                      f"{what}: {_mode(new.mode)}, {new.reason}. It had been failing ({outstanding}) since "
                      f"{_when(saved.failing_since)}."))
        notified = unsent = None
    warned = new.credential_warned_at
    if warned is not None and warned != saved.credential_warned_at:  # health.credential_warning fired this cycle
        text = getattr(outcome, "credential_warning", None) or (
            f"The data source's credential expires at {_when(new.credential_expires_at)}.")
        parts.append(("warning", "credential expiring", text[:1].upper() + text[1:]))
    if not parts:
        return None
    kind, headline, _ = parts[0]
    title = f"dreadpi on {host}: {headline}" if host else f"dreadpi: {headline}"
    body = "\n\n".join(text for _, _, text in parts)
    return Notice(title, body, kind, notified, unsent)


def scrub(notice: Notice, hidden: tuple) -> Notice:
    return Notice(redact(notice.title, hidden), redact(notice.body, hidden), notice.kind, notice.notified,
                  notice.unsent)


def redact(text: str, secrets: tuple) -> str:
    """Every secret replaced by ***, the longest first, so that a URL goes before the parts of it."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def secrets(config) -> tuple:  # noqa: ANN001 (Config)
    """What no message or warning may contain: the collector's secret settings, the MQTT password, each notify
    URL, and the parts of it that may be a password, key, token or topic. Left out, as they are not secret and
    would blank out ordinary words: host names and addresses, ports, query keys, and a user name unless it looks
    like a key."""
    from dreadpi import collectors

    settings = config.collector.settings
    try:
        keys = collectors.get(config.collector.source).secret_keys
    except (KeyError, ImportError):
        keys = ()
    found = [str(settings.get(key) or "") for key in keys]
    mqtt = getattr(config, "mqtt", None)
    if mqtt is not None and mqtt.password:
        found.append(mqtt.password)
    if config.notify.urls:
        from urllib.parse import unquote  # only where there are URLs to take apart
    for url in config.notify.urls:
        found.append(url)
        rest, _, query = url.partition("://")[2].partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, _, hostport = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        found += [password, unquote(password)]
        if len(user) >= 16 or any(ch.isdigit() for ch in user):
            found += [user, unquote(user)]
        parts = hostport.split(":") + re.split(r"[/,;#]+", path) + [item.partition("=")[2] for item in query.split("&")]
        for part in parts:
            found += [value for value in (part, unquote(part))
                      if len(value) >= 6 and not re.fullmatch(_HOSTNAME, value)]
    return tuple({value for value in found if len(value) >= 4})


def invocation(notice: Notice, urls: tuple, timeout: float) -> tuple:
    """(argv, stdin): the sender's source and the job travel on stdin; argv is the same for every message."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fetch_notify.py"), encoding="utf-8") as f:
        source = f.read()
    job = {"urls": list(urls), "title": notice.title, "body": notice.body, "type": notice.kind,
           "budget": max(1.0, timeout - HEADROOM)}
    stdin = (json.dumps(source) + "\n" + json.dumps(job) + "\n").encode("utf-8")
    return (PYTHON, "-I", "-c", _BOOT), stdin


def deliver(config, notice: Notice) -> tuple:  # noqa: ANN001 (Config)
    """(delivered to at least one URL, warnings for the error log) after sending `notice`, scrubbed of every
    secret, in the sandbox. Warnings name a URL by its position and scheme, never the URL, and are redacted all
    the same."""
    from dreadpi.errors import DreadpiError
    from dreadpi.reports import run_sandboxed

    urls = config.notify.urls
    hidden = secrets(config)
    notice = scrub(notice, hidden)
    headline = notice.title.partition(": ")[2] or notice.title
    try:
        argv, stdin = invocation(notice, urls, config.notify.timeout)
        sent, failed = _decode(run_sandboxed(config, argv, stdin, config.notify.timeout, "the sender"), len(urls))
    except (DreadpiError, OSError) as err:
        sent, failed = [], [(0, str(err))]
    warnings = []
    for position, why in failed:
        where = (f"notify.urls #{position} ({urls[position - 1].partition(':')[0].lower()})" if position else
                 "notify.urls")
        warnings.append(redact(f"notification '{headline}' not delivered to {where}: {why}", hidden))
    if not sent and notice.unsent != notice.notified:
        warnings.append(f"notification '{headline}' will be tried again next cycle")
    return bool(sent), warnings


def _decode(stdout: bytes, count: int) -> tuple:
    """([positions sent], [(position, why)]) from the child's JSON, checked: it talked to the network."""
    from dreadpi.errors import DreadpiError

    try:
        result = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DreadpiError("the sender printed no result") from None
    if not isinstance(result, dict):
        raise DreadpiError("the sender's result is not a JSON object")
    valid = range(1, count + 1)
    given_sent, given_failed = result.get("sent"), result.get("failed")
    sent = [p for p in given_sent if type(p) is int and p in valid] if isinstance(given_sent, list) else []
    failed = []
    for item in given_failed if isinstance(given_failed, list) else []:
        if isinstance(item, list) and len(item) == 2 and type(item[0]) is int and item[0] in valid:
            failed.append((item[0], str(item[1])[:120]))
    if isinstance(result.get("error"), str):
        failed.append((0, result["error"][:200]))
    if not sent and not failed:
        failed.append((0, "the sender reported nothing sent"))
    return sent, failed
