"""Load and validate `dreadpi.cfg`: every problem is reported as `section.key: problem`, all at once.

The role templates this file and validates it with `dreadpi check-config` before writing it, so anything this
module accepts must be safe to act on, and anything it rejects must say exactly what to change.
"""

from __future__ import annotations

import configparser
import os
import re
import stat
from collections import namedtuple

from dreadpi import collectors, modes, schema
from dreadpi.errors import ConfigError
from dreadpi.policy import ActiveHours, PolicySettings
from dreadpi.schema import REQUIRED, Field

DEFAULT_PATH = "/etc/dreadpi/dreadpi.cfg"

RELAY_BACKENDS = ("rpi-gpio", "gpiochip", "sim")


def _optional_number(minimum: float):  # noqa: ANN202
    parse = schema.number(minimum=minimum)
    return lambda text: None if not text.strip() else parse(text)


def _mode_or_hold(text: str) -> str:
    value = text.strip()
    if value != "hold" and value not in modes.ALL:
        raise ValueError(f"must be hold or one of {', '.join(modes.ORDER)}; got {value!r}")
    return value


def _mode(text: str) -> str:
    value = text.strip()
    if value not in modes.ALL:
        raise ValueError(f"must be one of {', '.join(modes.ORDER)}; got {value!r}")
    return value


def _active_hours(text: str) -> ActiveHours | None:
    return ActiveHours.parse(text) if text.strip() else None


def _pins(text: str) -> tuple:
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError("expected BCM GPIO numbers such as 17 27")
    pins = []
    for part in parts:
        if not part.isdigit() or not 2 <= int(part) <= 27:
            raise ValueError(f"expected BCM GPIO numbers from 2 to 27, got {part!r}")
        pins.append(int(part))
    if len(set(pins)) != len(pins):
        raise ValueError(f"a pin is listed twice: {text.strip()!r}")
    return tuple(pins)


def _pattern(text: str) -> tuple | None:
    parts = text.replace(",", " ").split()
    if not parts:
        return None  # this mode is not wired
    if any(part not in ("0", "1") for part in parts):
        raise ValueError(f"expected one 0 or 1 per relay (1 = energised), got {text.strip()!r}")
    return tuple(int(part) for part in parts)


COLLECTOR = {
    "source": Field(schema.text(r"[a-z][a-z0-9_-]*", "a collector name"), "script",
                    "where readings come from: " + " | ".join(collectors.NAMES)),
    "user": Field(schema.account_name, "nobody", "the unprivileged user collectors run as (never root)"),
    "group": Field(schema.account_name, "nogroup", "the group collectors run as"),
    "timeout": Field(schema.number(minimum=1, maximum=600), 30.0,
                     "seconds before a collector is killed, with all its children, and the failsafe applied"),
    "max_watts": Field(schema.number(minimum=1), 100000.0, "readings above this are treated as invalid"),
    "memory_limit": Field(schema.integer(minimum=16, maximum=4096), 256,
                          "address-space limit for a collector, in MiB"),
}

POLICY = {
    "threshold_low": Field(schema.number(minimum=0), 400.0, "watts below which drm2 (50 %) is asserted"),
    "threshold_high": Field(schema.number(minimum=0), 700.0, "watts below which drm3 (75 %) is asserted"),
    "threshold_off": Field(_optional_number(0), None,
                           "watts below which drm1 (compressor off) is asserted; empty = never (needs relays.drm1)"),
    "hysteresis": Field(schema.number(minimum=0), 150.0,
                        "watts a reading must clear a threshold by before a less restrictive mode is chosen"),
    "min_dwell": Field(schema.number(minimum=0), 1200.0, "seconds a mode is held before a normal change"),
    "max_age": Field(schema.number(minimum=1), 1000.0, "seconds after which a reading is stale"),
    "failsafe": Field(_mode_or_hold, "drm0",
                      "mode on missing, stale or invalid data, or a failed collector; hold keeps the last mode"),
    "active_hours": Field(_active_hours, None, "local HH:MM-HH:MM window in which the policy acts; empty = all day"),
    "outside_mode": Field(_mode, "drm0", "mode held outside active_hours"),
    "basis": Field(schema.choice("generation", "surplus"), "generation",
                   "what the thresholds judge: generation (gross solar, the original behaviour) or surplus (export "
                   "plus the air conditioner's own draw; needs consumption from the source and ac_watts)"),
    "ac_watts": Field(_optional_number(1), None, "the air conditioner's rated input in W (its nameplate); needed by "
                                                 "basis = surplus, whose thresholds follow from it"),
    "ac_draw": Field(schema.choice("allowed", "learned", "none"), "allowed",
                     "surplus basis: how the AC's unmeasured draw is estimated: allowed = ac_watts x the mode's cap; "
                     "learned = from the consumption step at mode changes; none = not at all (export only)"),
    "margin": Field(schema.number(minimum=0, maximum=1), 0.3,
                    "surplus basis: a mode is allowed when the spare power covers its draw less margin x ac_watts; "
                    "0 = true surplus only (least import), larger = more comfort"),
}

RELAYS = {
    "backend": Field(schema.choice(*RELAY_BACKENDS), "sim",
                     "rpi-gpio on a Pi (RPi.GPIO, from python3-rpi-lgpio or python3-rpi.gpio); gpiochip drives the "
                     "kernel's GPIO device with no library (any Pi, a Pi 5 on Debian too); sim keeps levels in a file"),
    "hold": Field(schema.choice("auto", "yes", "no"), "auto",
                  "who keeps gpiochip lines driven between cycles: auto = the kernel where it keeps released outputs, "
                  "else the relay hold service; yes = always the service; no = never (refused where the kernel "
                  "would release them)"),
    "pins": Field(_pins, (17, 27), "BCM GPIO numbers of relay 1, relay 2, ... (17 27 = physical pins 11 13)"),
    "active_low": Field(schema.boolean, False, "yes when a LOW input energises a relay (most opto boards)"),
    "drm0": Field(_pattern, (0, 0), "relays energised for drm0; must be all 0 so a dead Pi means normal"),
    "drm3": Field(_pattern, (0, 1), "relays energised for drm3 (cascade wiring: relay 2 alone)"),
    "drm2": Field(_pattern, (1, 0), "relays energised for drm2 (cascade wiring: relay 1)"),
    "drm1": Field(_pattern, None, "relays energised for drm1; empty when the board cannot assert it"),
}

PATHS = {
    "state_dir": Field(schema.absolute_path, "/var/lib/dreadpi", "state, lock and sim pin file"),
    "log_dir": Field(schema.absolute_path, "/var/log/dreadpi", "error.log and plot.log (rotated by logrotate)"),
}

def _schedule(text: str) -> str:
    value = " ".join(text.split())
    if value:
        from dreadpi.cron import Schedule

        Schedule(value)  # ValueError says what is wrong
    return value


def _optional_dir(text: str) -> str:
    return schema.absolute_path(text) if text.strip() else ""


METRICS = {
    "textfile_dir": Field(_optional_dir, "", "where each cycle writes dreadpi.prom for node_exporter's textfile "
                                             "collector; empty = no metrics"),
    "schedule": Field(_schedule, "", "the cron schedule the cycles run on (five fields, as in /etc/cron.d/dreadpi), "
                                     "so the metrics can say when the next cycle is due; empty = unknown"),
}

MAX_NOTIFY_URLS = 10
_NOTIFY_URL = r"([A-Za-z][A-Za-z0-9+.-]{1,31})://[^\s\x00-\x1f\x7f]{1,2000}"  # compiled only when URLs are given


def _notify_urls(text: str) -> tuple:
    """Apprise URLs, separated by spaces or new lines. They hold passwords and tokens, so a problem names the
    URL's position, never the URL."""
    urls = tuple(text.split())
    if len(urls) > MAX_NOTIFY_URLS:
        raise ValueError(f"at most {MAX_NOTIFY_URLS} URLs, got {len(urls)}")
    bad = [str(position) for position, url in enumerate(urls, 1) if not re.fullmatch(_NOTIFY_URL, url)]
    if bad:
        which = f"URL {bad[0]} of {len(urls)} is" if len(bad) == 1 else f"URLs {', '.join(bad)} of {len(urls)} are"
        raise ValueError(f"{which} not an Apprise URL (scheme://..., such as ntfy://TOPIC or "
                         f"mailto://USER:PASSWORD@HOST); not shown here, as URLs hold secrets")
    return urls


NOTIFY = {
    "urls": Field(_notify_urls, (), "Apprise URLs for push notifications (ntfy://, pover://, tgram://, mailto://, "
                                    "json://, ...), separated by spaces or new lines; empty = no notifications"),
    "after": Field(schema.integer(minimum=1, maximum=10000), 2,
                   "failsafe cycles in a row before a failure is notified, so that one blip pages nobody"),
    "timeout": Field(schema.number(minimum=1, maximum=600), 20.0,
                     "seconds before sending a notification is given up (the cycle's relays are already driven)"),
}

_MQTT_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]{2,45}\]?"
_TOPIC_LEVELS = r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+){0,7}"  # no wildcards (+ #), no empty level, no $ prefix


def _mqtt_host(text: str) -> str:
    value = text.strip()
    if value and not re.fullmatch(_MQTT_HOST, value):
        raise ValueError(f"expected a host name or address (empty = no MQTT), got {value!r}")
    return value.strip("[]")


def _optional_port(text: str) -> int | None:
    return schema.integer(minimum=1, maximum=65535)(text) if text.strip() else None


def _topic(text: str) -> str:
    """An MQTT topic prefix dreadpi publishes under: wildcards would make it a subscription, not a topic."""
    value = text.strip()
    if value and not re.fullmatch(_TOPIC_LEVELS, value):
        raise ValueError(f"expected topic levels such as dreadpi/kitchen (letters, digits, _ . -, separated by /; "
                         f"no wildcards + or #, no leading or trailing /), got {value!r}")
    return value


def _existing_file(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    value = schema.absolute_path(value)
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {value}")
    return value


MQTT = {
    "host": Field(_mqtt_host, "", "the MQTT broker Home Assistant uses; empty = no MQTT"),
    "port": Field(_optional_port, None, "the broker's port; empty = 8883 with tls, 1883 without"),
    "username": Field(schema.text(r"[^\s]{0,128}", "a user name without spaces"), "",
                      "dreadpi's user on the broker (its ACL lets it publish its own topics only)"),
    "password": Field(schema.text(r"[^\x00-\x1f]{0,256}", "a password on one line", secret=True), "",
                      "that user's password (a secret: never printed or published)"),
    "tls": Field(schema.boolean, True, "yes: TLS, the broker's certificate checked against ca_file or the system's "
                                       "CAs; no: plain TCP (the password travels in clear)"),
    "ca_file": Field(_existing_file, "", "the CA certificate (PEM) that signed the broker's; empty = the system's"),
    "topic_prefix": Field(_topic, "", "where dreadpi publishes its state and reads commands; empty = "
                                      "dreadpi/<hostname>"),
    "discovery_prefix": Field(_topic, "homeassistant", "Home Assistant's MQTT discovery prefix"),
    "timeout": Field(schema.number(minimum=1, maximum=120), 10.0,
                     "seconds before publishing is given up (the cycle's relays are already driven)"),
    "commands": Field(schema.boolean, False, "yes: the MQTT service (dreadpi mqtt-listen) applies Home Assistant's "
                                             "override select; no: the select is not offered"),
}

CORE_SECTIONS = {"collector": COLLECTOR, "policy": POLICY, "relays": RELAYS, "paths": PATHS, "metrics": METRICS,
                 "notify": NOTIFY, "mqtt": MQTT}


class CollectorSettings(namedtuple("CollectorSettings",
                                   ("source", "user", "group", "timeout", "max_watts", "memory_limit", "settings"))):
    """The `[collector]` section, plus `settings`: the chosen source's own section and nothing else."""

    __slots__ = ()
    source: str
    user: str
    group: str
    timeout: float
    max_watts: float
    memory_limit: int
    settings: dict


class RelaySettings(namedtuple("RelaySettings", ("backend", "pins", "active_low", "patterns", "hold"))):
    """The `[relays]` section; `patterns` maps each mode the board can assert to its tuple of 0/1."""

    __slots__ = ()
    backend: str
    pins: tuple
    active_low: bool
    patterns: dict
    hold: str


class MetricsSettings(namedtuple("MetricsSettings", ("textfile_dir", "schedule"))):
    """The `[metrics]` section."""

    __slots__ = ()
    textfile_dir: str
    schedule: str


class NotifySettings(namedtuple("NotifySettings", ("urls", "after", "timeout"))):
    """The `[notify]` section: `urls` is a tuple, empty when notifications are off."""

    __slots__ = ()
    urls: tuple
    after: int
    timeout: float


class MqttSettings(namedtuple("MqttSettings", ("host", "port", "username", "password", "tls", "ca_file",
                                             "topic_prefix", "discovery_prefix", "timeout", "commands"))):
    """The `[mqtt]` section, defaults resolved: `port` is a number and `topic_prefix` never empty. `host` empty:
    MQTT is off."""

    __slots__ = ()
    host: str
    port: int
    username: str
    password: str
    tls: bool
    ca_file: str
    topic_prefix: str
    discovery_prefix: str
    timeout: float
    commands: bool


def _mqtt_settings(values: dict) -> MqttSettings:
    port = values["port"] or (8883 if values["tls"] else 1883)
    prefix = values["topic_prefix"] or "dreadpi/" + (re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename) or "pi")
    return MqttSettings(**{**values, "port": port, "topic_prefix": prefix})


class Config(namedtuple("Config", ("path", "collector", "policy", "relays", "state_dir", "log_dir", "metrics",
                                   "notify", "mqtt"))):
    __slots__ = ()
    path: str
    collector: CollectorSettings
    policy: PolicySettings
    relays: RelaySettings
    state_dir: str
    log_dir: str
    metrics: MetricsSettings
    notify: NotifySettings
    mqtt: MqttSettings


def sections() -> dict:
    """Every section the program knows: the core ones and one per collector."""
    known = dict(CORE_SECTIONS)
    for name in collectors.NAMES:
        known[name] = collectors.get(name).schema
    return known


def parse_text(text: str, path: str = "<config>") -> Config:
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0none")
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateOptionError as err:
        raise ConfigError([f"{err.section}.{err.option}: given twice (line {err.lineno})"], path) from None
    except configparser.DuplicateSectionError as err:
        raise ConfigError([f"{err.section}: section given twice (line {err.lineno})"], path) from None
    except configparser.Error as err:
        raise ConfigError([f"not an INI file: {err.message.splitlines()[0]}"], path) from None
    return _validate(parser, path)


def load(path: str = DEFAULT_PATH) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError([f"cannot read the config: {err.strerror}"], path) from None
    except UnicodeDecodeError:
        raise ConfigError(["the config is not UTF-8 text"], path) from None
    return parse_text(text, path)


def check_permissions(path: str, as_root: bool) -> list:
    """Warnings about a readable config; raises when anyone but root could change what root will run."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise ConfigError([f"cannot stat the config: {err.strerror}"], path) from None
    perms = stat.S_IMODE(info.st_mode)
    if perms & 0o022:
        raise ConfigError([f"the config is writable by group or others (mode {perms:04o}); run: chmod 600 {path}"],
                          path)
    if as_root and info.st_uid != 0:
        raise ConfigError([f"the config is owned by uid {info.st_uid}, not root; run: chown root:root {path}"], path)
    if perms & 0o044:
        return [f"{path}: readable by group or others (mode {perms:04o}) and may hold API keys; run: chmod 600 {path}"]
    return []


def _suggest(word: str, options: list) -> str:
    import difflib  # only ever needed to explain a mistake

    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_section(parser: configparser.ConfigParser, name: str, fields: dict, problems: list) -> dict:
    given = parser[name] if parser.has_section(name) else {}
    values: dict = {}
    for key in given:
        if key not in fields:
            problems.append(f"{name}.{key}: unknown key{_suggest(key, list(fields))}")
    for key, spec in fields.items():
        if key in given:
            try:
                values[key] = spec.parse(given[key])
            except ValueError as err:
                problems.append(f"{name}.{key}: {err}")
        elif spec.default is REQUIRED:
            problems.append(f"{name}.{key}: missing (required)")
        else:
            values[key] = spec.default
    return values


def _validate(parser: configparser.ConfigParser, path: str) -> Config:
    problems: list = []
    known = sections()
    for name in parser.sections():
        if name not in known:
            problems.append(f"{name}: unknown section{_suggest(name, list(known))}")

    core = {name: _read_section(parser, name, fields, problems) for name, fields in CORE_SECTIONS.items()}
    coll, pol, rel = core["collector"], core["policy"], core["relays"]

    source = coll.get("source")
    source_settings: dict = {}
    if source is not None and source not in collectors.NAMES:
        problems.append(f"collector.source: unknown source {source!r}; choose one of {', '.join(collectors.NAMES)}"
                        f"{_suggest(source, list(collectors.NAMES))}")
        source = None
    for name in collectors.NAMES:
        if name != source and not parser.has_section(name):
            continue
        settings = _read_section(parser, name, known[name], problems)
        if name == source:
            source_settings = settings
            if len(settings) == len(known[name]):  # every key parsed: cross-key checks make sense
                problems.extend(collectors.get(name).check(settings, pol))
    if coll.get("user") == "root":
        problems.append("collector.user: collectors never run as root; use an unprivileged user such as nobody")
    if coll.get("group") == "root":
        problems.append("collector.group: collectors never run in the root group; use nogroup")

    _check_mqtt(core["mqtt"], problems)
    patterns = _check_relays(rel, problems)
    _check_policy(pol, patterns, problems)
    if pol.get("basis") == "surplus" and source in NO_CONSUMPTION:
        problems.append(f"policy.basis: surplus needs household consumption, and source {source} never gives it: "
                        f"{NO_CONSUMPTION[source]}")

    if problems:
        raise ConfigError(problems, path)
    policy = PolicySettings(**pol)
    return Config(
        path=path,
        collector=CollectorSettings(settings=source_settings, **coll),
        policy=policy,
        relays=RelaySettings(rel["backend"], rel["pins"], rel["active_low"], patterns, rel["hold"]),
        state_dir=core["paths"]["state_dir"],
        log_dir=core["paths"]["log_dir"],
        metrics=MetricsSettings(**core["metrics"]),
        notify=NotifySettings(**core["notify"]),
        mqtt=_mqtt_settings(core["mqtt"]),
    )


def _check_relays(rel: dict, problems: list) -> dict:
    pins = rel.get("pins")
    patterns = {mode: rel.get(mode) for mode in modes.ORDER if rel.get(mode) is not None}
    if pins is None:
        return patterns
    for mode, pattern in patterns.items():
        if len(pattern) != len(pins):
            problems.append(f"relays.{mode}: {len(pattern)} values for {len(pins)} pins; give one per pin")
    if "drm0" not in patterns:
        problems.append("relays.drm0: required; it is the pattern a dead dreadpi leaves behind (all 0)")
    elif any(patterns["drm0"]):
        problems.append("relays.drm0: must de-energise every relay (all 0), so that a Pi that dies or loses power "
                        "leaves the air conditioner in normal operation")
    seen: dict = {}
    for mode, pattern in patterns.items():
        if pattern in seen:
            problems.append(f"relays.{mode}: same pattern as relays.{seen[pattern]}; each mode needs its own")
        seen.setdefault(pattern, mode)
    return patterns


def problems_keys(problems: list) -> set:
    """The `section.key` names already reported, so one mistake is not reported twice."""
    return {problem.split(":", 1)[0].split(".", 1)[-1] for problem in problems}


# Sources that can never report household consumption: the Enlighten v4 summary (one call within the quota)
# has none, and another endpoint would double the calls the free plan allows.
NO_CONSUMPTION = {"enphase": "the Enlighten cloud summary carries no consumption, and asking for it would cost a "
                             "second API call per reading within the monthly quota; use envoy (consumption CTs), "
                             "pvoutput (a system uploading consumption) or a script"}


def _check_policy(pol: dict, patterns: dict, problems: list) -> None:
    low, high, off = pol.get("threshold_low"), pol.get("threshold_high"), pol.get("threshold_off")
    if low is not None and high is not None and low >= high:
        problems.append(f"policy.threshold_low: must be below threshold_high ({high:g}), got {low:g}")
    if off is not None and low is not None and off >= low:
        problems.append(f"policy.threshold_off: must be below threshold_low ({low:g}), got {off:g}")
    if off is not None and "drm1" not in patterns:
        problems.append("policy.threshold_off: needs relays.drm1, a relay pattern that asserts drm1")
    for mode in ("drm2", "drm3"):
        if mode not in patterns:
            problems.append(f"relays.{mode}: the policy asserts {mode}; give its relay pattern")
    if pol.get("basis") == "surplus" and pol.get("ac_watts") is None and "ac_watts" not in problems_keys(problems):
        problems.append("policy.ac_watts: basis = surplus needs the air conditioner's rated input in W (its "
                        "nameplate), from which its thresholds follow")
    for key in ("failsafe", "outside_mode"):
        mode = pol.get(key)
        if mode in modes.ALL and mode not in patterns:
            problems.append(f"policy.{key}: {mode} has no relay pattern (relays.{mode})")


def _check_mqtt(mqtt: dict, problems: list) -> None:
    if mqtt.get("password") and not mqtt.get("username"):
        problems.append("mqtt.password: given without mqtt.username")
    if not mqtt.get("host"):
        return
    if mqtt.get("topic_prefix") and mqtt.get("topic_prefix") == mqtt.get("discovery_prefix"):
        problems.append("mqtt.topic_prefix: must differ from mqtt.discovery_prefix")
    if mqtt.get("ca_file") and mqtt.get("tls") is False:
        problems.append("mqtt.ca_file: only used with mqtt.tls = yes")
