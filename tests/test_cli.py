"""The command line as a user and the Ansible role meet it: messages, exit codes, no side effects."""

from __future__ import annotations

import pytest

from dreadpi import __version__
from dreadpi.cli import parse_duration
from dreadpi.errors import UsageError
from tests.conftest import REPO, dreadpi, write_config


def test_version():
    result = dreadpi("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dreadpi {__version__}"


def test_help_lists_exit_codes():
    result = dreadpi("--help")
    assert "exit codes:" in result.stdout and "failsafe" in result.stdout


def test_no_command_is_a_usage_error():
    assert dreadpi().returncode == 64
    assert dreadpi("frobnicate").returncode == 64


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--bogus"], "run: unknown option '--bogus'"),
    (["run", "-c"], "run: -c needs a value"),
    (["check-config"], "check-config: expected FILE, got nothing"),
    (["status", "extra"], "status: expected no arguments, got extra"),
    (["override"], "override: expected MODE, got nothing"),
])
def test_usage_errors_say_what_is_wrong(args, message):
    result = dreadpi(*args)
    assert result.returncode == 64
    assert message in result.stderr


def test_options_in_any_form(tmp_path):
    cfg = write_config(tmp_path)
    for args in (["status", "-c", str(cfg), "--json"], ["status", f"--config={cfg}", "--json"],
                 ["status", "--json", "--config", str(cfg)]):
        result = dreadpi(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("{")


def test_command_help():
    result = dreadpi("override", "--help")
    assert result.returncode == 0 and "--for" in result.stdout


def test_check_config_accepts_the_example():
    result = dreadpi("check-config", str(REPO / "dreadpi.cfg.example"))
    assert result.returncode == 0
    assert result.stdout.strip().endswith("OK")


def test_check_config_prints_one_line_per_problem_and_touches_nothing(tmp_path):
    path = write_config(tmp_path, {"policy": {"threshold_low": "abc", "failsafe": "sometimes"}})
    result = dreadpi("check-config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.endswith("policy.threshold_low: expected a number, got 'abc'") for line in lines)
    assert any("policy.failsafe:" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dreadpi.cfg"]  # no state or log dir made


def test_run_refuses_a_writable_config_and_leaves_relays_alone(tmp_path):
    path = write_config(tmp_path)
    path.chmod(0o666)
    result = dreadpi("run", "-c", str(path))
    assert result.returncode == 2
    assert "writable by group or others" in result.stderr
    assert not (tmp_path / "state").exists()


def test_run_with_an_invalid_config_touches_nothing(tmp_path):
    path = write_config(tmp_path, {"relays": {"drm0": "1 1"}})
    result = dreadpi("run", "-c", str(path))
    assert result.returncode == 2
    assert "relays.drm0: must de-energise every relay" in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45", 45),
                                                ("45s", 45), ("7d", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "8d", "2 hours", "h", "-1h"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="--for"):
        parse_duration(text)
