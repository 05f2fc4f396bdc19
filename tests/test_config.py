"""Config validation: every mistake is reported as `section.key: problem`, and the example is complete."""

from __future__ import annotations

import configparser
import os
import re

import pytest

from dreadpi import config
from dreadpi.errors import ConfigError
from tests.conftest import REPO, write_config


def problems_of(text: str) -> list:
    with pytest.raises(ConfigError) as caught:
        config.parse_text(text)
    return caught.value.problems


def test_defaults_are_the_original_behaviour():
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n")
    assert cfg.policy.threshold_low == 400 and cfg.policy.threshold_high == 700
    assert cfg.policy.max_age == 1000 and cfg.policy.failsafe == "drm0"
    assert cfg.relays.pins == (17, 27)
    assert cfg.relays.patterns == {"drm0": (0, 0), "drm3": (0, 1), "drm2": (1, 0)}
    assert cfg.collector.user == "nobody" and cfg.collector.group == "nogroup"
    assert cfg.collector.settings == {"command": ("/bin/echo", "1")}
    assert (cfg.state_dir, cfg.log_dir) == ("/var/lib/dreadpi", "/var/log/dreadpi")


def test_the_example_documents_every_key_and_is_valid():
    text = (REPO / "dreadpi.cfg.example").read_text()
    config.parse_text(text)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    for section in ("collector", "policy", "relays", "paths", "script", "notify", "mqtt"):
        assert set(parser[section]) == set(config.sections()[section]), section
    for section in ("pvoutput", "enphase", "envoy"):  # commented out: only the chosen source's is given
        block = text.split(f"# [{section}]\n", 1)[1].split("\n\n", 1)[0]
        keys = set(re.findall(r"^# (\w+) =", block, re.M))
        assert keys == set(config.sections()[section]), section


@pytest.mark.parametrize(("text", "expected"), [
    ("[policy]\nthreshold_low = lots\n", "policy.threshold_low: expected a number, got 'lots'"),
    ("[policy]\nthreshold_low = 800\n", "policy.threshold_low: must be below threshold_high (700), got 800"),
    ("[policy]\ntreshold_low = 1\n", "policy.treshold_low: unknown key (did you mean threshold_low?)"),
    ("[polcy]\nx = 1\n", "polcy: unknown section (did you mean policy?)"),
    ("[policy]\nmax_age = nan\n", "policy.max_age: expected a finite number"),
    ("[policy]\nhysteresis = -1\n", "policy.hysteresis: must be at least 0"),
    ("[policy]\nfailsafe = off\n", "policy.failsafe: must be hold or one of drm0, drm3, drm2, drm1; got 'off'"),
    ("[policy]\nfailsafe = drm1\n", "policy.failsafe: drm1 has no relay pattern (relays.drm1)"),
    ("[policy]\nthreshold_off = 100\n", "policy.threshold_off: needs relays.drm1"),
    ("[policy]\nactive_hours = 5-21\n", "policy.active_hours: expected HH:MM-HH:MM"),
    ("[relays]\nbackend = gpio\n", "relays.backend: must be one of rpi-gpio, gpiochip, sim; got 'gpio'"),
    ("[relays]\npins = 17 17\n", "relays.pins: a pin is listed twice"),
    ("[relays]\npins = 17 40\n", "relays.pins: expected BCM GPIO numbers from 2 to 27, got '40'"),
    ("[relays]\ndrm0 = 1 0\n", "relays.drm0: must de-energise every relay"),
    ("[relays]\ndrm3 = 0 1 1\n", "relays.drm3: 3 values for 2 pins"),
    ("[relays]\ndrm3 = 1 0\n", "relays.drm2: same pattern as relays.drm3"),
    ("[relays]\ndrm2 = 1 x\n", "relays.drm2: expected one 0 or 1 per relay"),
    ("[relays]\nactive_low = maybe\n", "relays.active_low: expected yes or no, got 'maybe'"),
    ("[collector]\nuser = root\n", "collector.user: collectors never run as root"),
    ("[collector]\nsource = pvoutpt\n", "collector.source: unknown source 'pvoutpt'"),
    ("[collector]\ntimeout = 0\n", "collector.timeout: must be at least 1"),
    ("[paths]\nstate_dir = var/lib\n", "paths.state_dir: expected an absolute path"),
    ("[script]\ncommand = /bin/echo 1; rm -rf /\n", "script.command: may only contain"),
    ("[script]\ncommand = echo 1\n", "script.command: the program must be an absolute path"),
    ("[script]\ncommand = $(reboot)\n",
     "script.command: may only contain A-Z a-z 0-9 space _ - . /; found '$' '(' ')'"),
    ("[policy]\nmin_dwell = 1\nmin_dwell = 2\n", "policy.min_dwell: given twice"),
    ("no section\n", "not an INI file"),
])
def test_each_mistake_names_its_section_and_key(text, expected):
    if "[script]" not in text:
        text += "[script]\ncommand = /bin/echo 1\n"
    found = problems_of(text)
    assert any(expected in problem for problem in found), found


def test_a_missing_script_command_is_required():
    assert "script.command: missing (required)" in problems_of("[collector]\nsource = script\n")


def test_all_problems_are_reported_at_once():
    found = problems_of("[policy]\nthreshold_low = x\nhysteresis = y\n[relays]\nbackend = z\n")
    assert len(found) >= 4  # the three bad values and the missing script command


def test_drm1_on_a_third_relay():
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n[relays]\npins = 17 27 22\n"
                            "drm0 = 0 0 0\ndrm3 = 0 1 0\ndrm2 = 1 0 0\ndrm1 = 0 0 1\n[policy]\nthreshold_off = 100\n")
    assert cfg.relays.patterns["drm1"] == (0, 0, 1)
    assert cfg.policy.threshold_off == 100


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config: No such file"):
        config.load(str(tmp_path / "nope.cfg"))


def test_permissions(tmp_path):
    path = write_config(tmp_path)
    assert config.check_permissions(str(path), as_root=False) == []
    path.chmod(0o644)
    assert "readable by group or others" in config.check_permissions(str(path), as_root=False)[0]
    path.chmod(0o620)
    with pytest.raises(ConfigError, match="writable by group or others .* chmod 600"):
        config.check_permissions(str(path), as_root=False)
    path.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigError, match="owned by uid 65534, not root"):
            config.check_permissions(str(path), as_root=True)


API_BASE = "[collector]\nsource = {source}\n[{source}]\n"
PV = "api_key = 0123456789abcdef\nsystem_id = 12\n"
EN = "api_key = " + "a" * 32 + "\nclient_id = " + "b" * 32 + "\nclient_secret = " + "c" * 32 + "\nsystem_id = 7\n"
ENVOY = "token = aaa.bbb.ccc\n"


@pytest.mark.parametrize(("source", "body", "expected"), [
    ("pvoutput", PV + "timezone = Mars/Olympus\n", "pvoutput.timezone: expected a time zone name such as "
                                                      "Australia/Sydney"),
    ("pvoutput", PV + "timezone = ../../etc/passwd\n", "pvoutput.timezone: expected a time zone name"),
    ("pvoutput", "api_key = 0123456789abcdef\nsystem_id = 12a\n", "pvoutput.system_id: expected a numeric"),
    ("pvoutput", "system_id = 1\n", "pvoutput.api_key: missing (required)"),
    ("envoy", ENVOY + "host = https://envoy.local/\n", "envoy.host: expected the gateway's host name or IP"),
    ("envoy", ENVOY + "host = envoy.local:8443\n", "envoy.host: expected the gateway's host name or IP"),
    ("envoy", ENVOY + "host = 999.1.1.1\n", "envoy.host: expected the gateway's host name or IP"),
    ("envoy", ENVOY + "host = envoy\ncert_sha256 = 12:34\n", "envoy.cert_sha256: expected a SHA-256 fingerprint"),
    ("envoy", "host = envoy\ntoken = not-a-jwt\n", "envoy.token: expected an Enphase owner token"),
    ("enphase", EN + "monthly_quota = 0\n", "enphase.monthly_quota: must be at least 10"),
    ("enphase", EN + "min_interval = 5\n", "enphase.min_interval: must be at least 60"),
    ("enphase", EN.replace("system_id = 7", "system_id = seven"), "enphase.system_id: expected a numeric"),
])
def test_api_collector_settings_are_validated(source: str, body: str, expected: str) -> None:
    text = API_BASE.format(source=source) + body + "[policy]\nmax_age = 3600\n"
    with pytest.raises(ConfigError) as caught:
        config.parse_text(text)
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("source", "body", "secret"), [
    ("pvoutput", "api_key = my secret key!\nsystem_id = 1\n", "my secret key!"),
    ("enphase", EN.replace("c" * 32, "sh0rt!secret"), "sh0rt!secret"),
    ("envoy", "host = envoy\ntoken = hunter2 token\n", "hunter2 token"),
])
def test_a_malformed_secret_is_not_quoted_back(source: str, body: str, secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse_text(API_BASE.format(source=source) + body + "[policy]\nmax_age = 3600\n")
    assert caught.value.problems and secret not in str(caught.value)
    assert "got the value given" in str(caught.value)


def test_api_collector_settings_are_normalised() -> None:
    fingerprint = ":".join(["AB"] * 32)
    cfg = config.parse_text(API_BASE.format(source="envoy") + ENVOY + f"host = Envoy.LOCAL\ncert_sha256 = "
                            f"{fingerprint}\n")
    assert cfg.collector.settings == {"host": "envoy.local", "token": "aaa.bbb.ccc", "cert_sha256": "ab" * 32}
    v6 = config.parse_text(API_BASE.format(source="envoy") + ENVOY + "host = fe80:0::1\n")
    assert v6.collector.settings["host"] == "fe80::1"
    en = config.parse_text(API_BASE.format(source="enphase") + EN + "[policy]\nmax_age = 3600\n")
    assert en.collector.settings["monthly_quota"] == 1000 and en.collector.settings["min_interval"] is None
