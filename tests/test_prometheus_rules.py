"""The Prometheus side of "Knowing when it breaks", checked with promtool (Debian's, installed on first use; see
tests/promtool.py): the alert rules load, their unit tests pass, and fail when a rule is changed; the scrape example
is a valid config that names each Pi; a metrics file in the contract's format passes promtool's lint, and the rules
only use the contract's metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests import promtool
from tests.conftest import REPO

FILES = REPO / "files" / "prometheus"
RULES = FILES / "dreadpi-alerts.yml"
RULE_TESTS = FILES / "dreadpi-alerts.test.yml"
SCRAPE = FILES / "scrape-example.yml"
RUNBOOK = "README.md#knowing-when-it-breaks"

# One cycle's dreadpi.prom exactly as the metrics contract describes it (every optional series present).
SAMPLE = """\
# HELP dreadpi_info The running dreadpi version.
# TYPE dreadpi_info gauge
dreadpi_info{version="0.9"} 1
# HELP dreadpi_mode The asserted demand-response mode: 1 for it, 0 for the other modes the board has.
# TYPE dreadpi_mode gauge
dreadpi_mode{mode="drm0"} 0
dreadpi_mode{mode="drm3"} 1
dreadpi_mode{mode="drm2"} 0
dreadpi_mode{mode="drm1"} 0
# HELP dreadpi_permitted_ratio Share of its normal input the asserted mode permits the air conditioner.
# TYPE dreadpi_permitted_ratio gauge
dreadpi_permitted_ratio 0.75
# HELP dreadpi_generation_watts The usable generation reading of the last cycle.
# TYPE dreadpi_generation_watts gauge
dreadpi_generation_watts 550
# HELP dreadpi_reading_age_seconds Age of that reading when the cycle ran.
# TYPE dreadpi_reading_age_seconds gauge
dreadpi_reading_age_seconds 42
# HELP dreadpi_failsafe 1 when the failsafe mode is applied because there is no usable reading.
# TYPE dreadpi_failsafe gauge
dreadpi_failsafe 0
# HELP dreadpi_consecutive_failsafe_cycles Cycles in a row that applied the failsafe mode.
# TYPE dreadpi_consecutive_failsafe_cycles gauge
dreadpi_consecutive_failsafe_cycles 0
# HELP dreadpi_problem 1 for the current problem class, 0 for the others; all 0 when healthy.
# TYPE dreadpi_problem gauge
dreadpi_problem{problem="auth"} 0
dreadpi_problem{problem="quota"} 0
dreadpi_problem{problem="unreachable"} 0
dreadpi_problem{problem="bad-answer"} 0
dreadpi_problem{problem="stale"} 0
dreadpi_problem{problem="relay"} 0
dreadpi_problem{problem="config"} 0
# HELP dreadpi_control_active 1 when the cycle ran inside the configured active hours.
# TYPE dreadpi_control_active gauge
dreadpi_control_active 1
# HELP dreadpi_last_cycle_timestamp_seconds When the last cycle ran.
# TYPE dreadpi_last_cycle_timestamp_seconds gauge
dreadpi_last_cycle_timestamp_seconds 1768500000
# HELP dreadpi_next_cycle_timestamp_seconds When cron's schedule runs the next cycle.
# TYPE dreadpi_next_cycle_timestamp_seconds gauge
dreadpi_next_cycle_timestamp_seconds 1768500900
# HELP dreadpi_cycle_interval_seconds The schedule's usual interval between cycles.
# TYPE dreadpi_cycle_interval_seconds gauge
dreadpi_cycle_interval_seconds 900
# HELP dreadpi_last_good_reading_timestamp_seconds When the last usable reading was measured.
# TYPE dreadpi_last_good_reading_timestamp_seconds gauge
dreadpi_last_good_reading_timestamp_seconds 1768499958
# HELP dreadpi_relay_switches_total Relay changes ever made.
# TYPE dreadpi_relay_switches_total counter
dreadpi_relay_switches_total 1234
# HELP dreadpi_credential_expiry_timestamp_seconds When the data source's credential expires.
# TYPE dreadpi_credential_expiry_timestamp_seconds gauge
dreadpi_credential_expiry_timestamp_seconds 1800000000
# HELP dreadpi_collector_duration_seconds How long the collector took.
# TYPE dreadpi_collector_duration_seconds gauge
dreadpi_collector_duration_seconds 0.84
"""
CONTRACT_METRICS = set(re.findall(r"^# TYPE (\w+) ", SAMPLE, re.MULTILINE))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def test_rules_are_valid():
    done = promtool.run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_rule_unit_tests_pass():
    done = promtool.run("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_labelled_annotated_and_tested_both_ways():
    cases = [case for group in load(RULE_TESTS)["tests"] for case in group["alert_rule_test"]]
    assert {group["name"] for group in load(RULES)["groups"]} == {"dreadpi"}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert "{{ $labels.instance }}" in annotations["summary"], name
        assert "{{ $labels.instance }}" in annotations["description"], name
        assert annotations["runbook"] == RUNBOOK, name
        firing = [case for case in cases if case["alertname"] == name and case.get("exp_alerts")]
        quiet = [case for case in cases if case["alertname"] == name and not case.get("exp_alerts")]
        assert firing and quiet, f"{name}: needs a case where it fires and one where it must not"
        for case in firing:
            for alert in case["exp_alerts"]:
                assert alert["exp_annotations"]["runbook"] == RUNBOOK
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}


def test_rules_and_their_tests_use_only_contract_metrics():
    """A misspelt metric would make a rule silently never fire, and its tests would feed the same misspelling."""
    used = set(re.findall(r"\bdreadpi_[a-z_]+\b", RULES.read_text()))
    assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS
    series = [s["series"] for group in load(RULE_TESTS)["tests"] for s in group["input_series"]]
    fed = {re.match(r"\w+", s).group() for s in series}
    assert fed <= CONTRACT_METRICS | {"up"}, fed - CONTRACT_METRICS


GROUPS = [test["name"] for test in load(RULE_TESTS)["tests"]]

# (test group that must catch it, the alert it fails on, text in dreadpi-alerts.yml, replacement): plausible wrong
# edits, each of which the unit tests must reject.
MUTATIONS = [
    ("failsafe in active hours", "DreadpiFailsafeInActiveHours", "for: 1h", "for: 45m"),
    ("failsafe in active hours", "DreadpiFailsafeInActiveHours", "Problem: {{ $problem }}.", "Problem: {{ $problem }}"),
    ("failsafe in active hours", "DreadpiFailsafeInActiveHours",
     "and on (instance, job) dreadpi_control_active == 1\n", ""),
    ("overnight pause", "DreadpiFailsafeInActiveHours",
     "< 2 * dreadpi_cycle_interval_seconds", "< 4 * dreadpi_cycle_interval_seconds"),
    ("overnight pause", "DreadpiCyclesStopped", "> dreadpi_cycle_interval_seconds\n", "> 0\n"),
    ("cycles stopped, metrics gone", "DreadpiCyclesStopped",
     "> 2 * dreadpi_cycle_interval_seconds", "> dreadpi_cycle_interval_seconds"),
    ("cycles stopped, metrics gone", "DreadpiCyclesStopped",
     "and on (instance, job) up == 1", "and on (instance, job) up >= 0"),
    ("credential expiry", "DreadpiCredentialExpiring", "< 14 * 86400 > 0", "< 21 * 86400 > 0"),
    ("credential expiry", "DreadpiCredentialExpiring", "< 14 * 86400 > 0", "<= 14 * 86400 > 0"),
    ("credential expiry", "DreadpiCredentialExpired", "_seconds >= 0", "_seconds >= 3600"),
    ("relay chatter", "DreadpiRelayChatter", "[1h]) > 8", "[1h]) > 1"),
    ("relay chatter", "DreadpiRelayChatter", "[1h]) > 8", "[1h]) > 20"),
]


def write_suite(directory: Path, group: str) -> Path:
    """The unit tests of one group, beside a copy of the rules, in `directory`."""
    suite = load(RULE_TESTS)
    suite["tests"] = [test for test in suite["tests"] if test["name"] == group]
    assert suite["tests"], group
    shutil.copy(RULES, directory / RULES.name)
    tests = directory / RULE_TESTS.name
    tests.write_text(yaml.safe_dump(suite, sort_keys=False))
    return tests


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_passes_alone(tmp_path, group):
    """What the mutation tests run: one group of the shipped tests, on its own, passes."""
    done = promtool.run("test", "rules", str(write_suite(tmp_path, group)))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("group", "alert", "old", "new"), MUTATIONS,
                         ids=[f"{old.strip()} -> {new.strip() or 'removed'}" for _, _, old, new in MUTATIONS])
def test_a_changed_rule_fails_the_tests(tmp_path, group, alert, old, new):
    """The unit tests can fail: a wrong edit of a rule, still a valid rule, fails that alert's expectations."""
    rules = RULES.read_text()
    assert rules.count(old) == 1, f"{old!r} must appear exactly once in {RULES.name}"
    tests = write_suite(tmp_path, group)
    (tmp_path / RULES.name).write_text(rules.replace(old, new))
    valid = promtool.run("check", "rules", str(tmp_path / RULES.name))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    done = promtool.run("test", "rules", str(tests))
    assert done.returncode != 0, done.stdout
    assert f"alertname: {alert}," in done.stdout + done.stderr, done.stdout + done.stderr


def test_scrape_example_is_valid_and_loads_the_rules():
    done = promtool.run("check", "config", str(SCRAPE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_scrape_example_names_each_pi():
    """instance is the Pi's inventory name, whether the target is a host name or an address."""
    done = promtool.run("check", "service-discovery", "--timeout=2s", str(SCRAPE), "dreadpi")
    assert done.returncode == 0, done.stdout + done.stderr
    targets = {t["labels"]["__address__"]: t["labels"] for t in json.loads(done.stdout)}
    assert {address: labels["instance"] for address, labels in targets.items()} == {
        "pi-kitchen.local:9100": "pi-kitchen", "192.0.2.20:9100": "pi-garage"}
    inventory = load(REPO / "inventory" / "example" / "hosts.yml")["dreadpi"]["hosts"]
    assert {labels["instance"] for labels in targets.values()} == set(inventory)
    assert {labels["job"] for labels in targets.values()} == {"dreadpi"}


def test_a_metrics_file_in_the_contract_format_passes_the_lint():
    assert promtool.check_metrics(SAMPLE) == ""


def test_check_metrics_reports_what_is_wrong():
    bad = ("# TYPE dreadpi_relay_switches counter\ndreadpi_relay_switches 3\n"
           "# HELP dreadpi_collector_duration_milliseconds How long.\n"
           "# TYPE dreadpi_collector_duration_milliseconds gauge\ndreadpi_collector_duration_milliseconds 840\n")
    problems = promtool.check_metrics(bad)
    assert 'dreadpi_collector_duration_milliseconds use base unit "seconds" instead of "milliseconds"' in problems
    assert 'dreadpi_relay_switches counter metrics should have "_total" suffix' in problems
    assert "dreadpi_relay_switches no help text" in problems
    assert "error while linting" in promtool.check_metrics("dreadpi_failsafe{ 1\n")
