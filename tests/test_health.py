"""No silent failures: the health a cycle keeps (status --json `health`), credential foresight, the metrics file
for node_exporter (checked by the real promtool), and the cron schedule behind `next cycle due`.

Cycles are the real `dreadpi run` in a fresh process, as cron runs it; the collector is a script whose output a
test changes between cycles.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, dreadpi, write_config
from tests.promtool import check_metrics


def run(cfg: Path, **kwargs) -> tuple:
    result = dreadpi("run", "-c", str(cfg), **kwargs)
    done = dreadpi("status", "--json", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    return result, json.loads(done.stdout)


def watts_script(directory: Path) -> tuple:
    """A collector printing whatever the test last wrote to a file; returns (command, writer)."""
    data = directory / "reading"
    data.write_text("550\n")
    data.chmod(0o644)

    def write(text: str) -> None:
        data.write_text(text + "\n")

    return f"/bin/cat {data}", write


def metrics(directory: Path) -> dict:
    """{'name{labels}': value} from the metrics file, and the file's text under the key ''."""
    text = (directory / "prom" / "dreadpi.prom").read_text()
    found: dict = {"": text}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_failing_since_counts_and_recovers(world_dir):
    command, write = watts_script(world_dir)
    cfg = write_config(world_dir, {"script": {"command": command}})
    _, info = run(cfg)
    assert info["health"] == {"failing_since": None, "consecutive_failsafe": 0, "problem": None,
                              "last_good_reading_at": info["reading_at"], "credential_expires_at": None,
                              "switches_total": 1}  # drm3: relay 2 energised
    good_at = info["health"]["last_good_reading_at"]
    write("junk")
    _, first = run(cfg)
    time.sleep(1.1)
    _, second = run(cfg)
    assert first["health"]["problem"] == second["health"]["problem"] == "bad-answer"
    assert (first["health"]["consecutive_failsafe"], second["health"]["consecutive_failsafe"]) == (1, 2)
    assert second["health"]["failing_since"] == first["health"]["failing_since"] == first["updated_at"]
    assert second["health"]["last_good_reading_at"] == good_at
    assert second["health"]["switches_total"] == 2  # the failsafe released relay 2; the second changed nothing
    write("350")
    _, healed = run(cfg)
    assert healed["health"]["problem"] is None and healed["health"]["failing_since"] is None
    assert healed["health"]["consecutive_failsafe"] == 0
    assert healed["health"]["switches_total"] == 3  # relay 1 energised for drm2
    text = dreadpi("status", "-c", str(cfg)).stdout
    assert "health    ok" in text


def test_a_relay_failure_is_recorded_as_the_relay_problem(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}, "relays": {"backend": "rpi-gpio"},
                                   "metrics": {"textfile_dir": str(world_dir / "prom")}})
    result = dreadpi("run", "-c", str(cfg))  # register RPi.GPIO on a machine with no GPIO: it cannot drive
    assert result.returncode == 5, result.stderr
    info = json.loads(dreadpi("status", "--json", "-c", str(cfg)).stdout)
    assert info["health"]["problem"] == "relay" and info["health"]["failing_since"]
    assert metrics(world_dir)['dreadpi_problem{problem="relay"}'] == 1


def jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256', 'kid': 'x'})}.{part(claims)}.c2lnbmF0dXJl"


def test_an_expiring_envoy_token_warns_once_a_day_and_is_never_printed(world_dir):
    expires = int(time.time()) + 10 * 86400
    token = jwt({"aud": "123456789012", "exp": expires, "enphaseUser": "owner"})
    cfg = write_config(world_dir, {"collector": {"source": "envoy", "timeout": "2"},
                                   "envoy": {"host": "127.0.0.1", "token": token},  # nothing listens there
                                   "metrics": {"textfile_dir": str(world_dir / "prom")}})
    first, info = run(cfg)
    second, _ = run(cfg)
    log = (world_dir / "log" / "error.log").read_text()
    assert info["health"]["credential_expires_at"] is not None
    assert log.count("the Envoy owner token expires at") == 1, log  # once a day, not every cycle
    assert "in 10 days: get a new one at https://entrez.enphaseenergy.com and set envoy.token" in log
    assert metrics(world_dir)["dreadpi_credential_expiry_timestamp_seconds"] == expires
    everything = log + first.stdout + first.stderr + second.stderr + (world_dir / "state" / "state.json").read_text()
    assert token not in everything and token.split(".")[1] not in everything


def test_an_enlighten_refresh_token_expires_a_month_after_it_was_stored(world_dir):
    state = world_dir / "state"
    state.mkdir()
    stored_at = time.time() - 20 * 86400
    tokens = state / "enphase-tokens.json"
    tokens.write_text(json.dumps({"access_token": "a", "refresh_token": "r", "access_expires_at": 0,
                                  "seed": "", "stored_at": stored_at}))
    tokens.chmod(0o600)
    # A call was just made, so this cycle makes none (and the test sends nothing anywhere): a quota failsafe.
    budget = state / "enphase-budget.json"
    budget.write_text(json.dumps({"last_call": time.time()}))
    budget.chmod(0o600)
    cfg = write_config(world_dir, {"collector": {"source": "enphase", "timeout": "2"},
                                   "enphase": {"api_key": "k" * 32, "client_id": "c" * 16, "client_secret": "s" * 16,
                                               "system_id": "42", "min_interval": "600"},
                                   "policy": {"max_age": "3600"}})
    _, info = run(cfg)
    log = (world_dir / "log" / "error.log").read_text()
    assert info["health"]["problem"] == "quota"
    assert "the Enlighten refresh token expires at" in log and "re-authorise with: dreadpi enphase-auth" in log
    assert info["health"]["credential_expires_at"] is not None


def test_the_metrics_file_passes_promtool_and_follows_the_cycle(world_dir):
    command, write = watts_script(world_dir)
    cfg = write_config(world_dir, {"script": {"command": command}, "policy": {"active_hours": "00:00-23:59"},
                                   "metrics": {"textfile_dir": str(world_dir / "prom"),
                                               "schedule": "*/15 5-21 * * *"}})
    run(cfg)
    seen = metrics(world_dir)
    assert check_metrics(seen[""]) == ""
    assert seen['dreadpi_mode{mode="drm3"}'] == 1 and seen['dreadpi_mode{mode="drm0"}'] == 0
    assert seen["dreadpi_permitted_ratio"] == 0.75 and seen["dreadpi_generation_watts"] == 550
    assert seen["dreadpi_failsafe"] == 0 and seen["dreadpi_relay_switches_total"] == 1
    assert seen["dreadpi_cycle_interval_seconds"] == 900
    until_next = seen["dreadpi_next_cycle_timestamp_seconds"] - seen["dreadpi_last_cycle_timestamp_seconds"]
    assert 0 < until_next <= 7.25 * 3600  # at most the overnight pause, 21:45 to 05:00
    assert seen["dreadpi_control_active"] == 1
    assert all(value == 0 for key, value in seen.items() if key.startswith("dreadpi_problem"))
    write("junk")
    run(cfg)
    broken = metrics(world_dir)
    assert check_metrics(broken[""]) == ""
    assert broken["dreadpi_failsafe"] == 1 and broken["dreadpi_consecutive_failsafe_cycles"] == 1
    assert broken['dreadpi_problem{problem="bad-answer"}'] == 1 and broken['dreadpi_mode{mode="drm0"}'] == 1
    assert "dreadpi_generation_watts" not in broken  # no reading: absent, not 0
    assert broken["dreadpi_last_good_reading_timestamp_seconds"] == seen["dreadpi_last_good_reading_timestamp_seconds"]
    assert sorted(os.listdir(world_dir / "prom")) == ["dreadpi.prom"]  # written aside and renamed: nothing left over
    assert (world_dir / "prom" / "dreadpi.prom").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_metrics_dir_is_a_warning_and_changes_nothing_else(world_dir):
    blocker = world_dir / "prom"
    blocker.write_text("a file where the directory should be\n")
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"},
                                   "metrics": {"textfile_dir": str(blocker / "sub")}})
    result, info = run(cfg)
    assert result.returncode == 0 and info["mode"] == "drm2"
    assert "warning: metrics not written to" in (world_dir / "log" / "error.log").read_text()


def test_bad_metrics_settings_name_the_key(world_dir):
    cfg = write_config(world_dir, {"metrics": {"textfile_dir": "relative/dir", "schedule": "*/15 5-25 * * *"}})
    done = dreadpi("check-config", str(cfg))
    assert done.returncode == 2
    assert "metrics.textfile_dir: expected an absolute path, got 'relative/dir'" in done.stderr
    assert "metrics.schedule: hour: 25 is outside 0-23" in done.stderr


def next_runs(schedule: str, start: str, count: int, zone: str = "Australia/Sydney") -> list:
    """The next `count` runs after local time `start`, computed by dreadpi.cron in a child with TZ set."""
    code = ("import sys, time; from dreadpi.cron import Schedule; s = Schedule(sys.argv[1]); "
            "t = time.mktime(time.strptime(sys.argv[2], '%Y-%m-%d %H:%M')); out = []\n"
            "for _ in range(int(sys.argv[3])):\n"
            "    t = s.next_after(t); out.append(time.strftime('%Y-%m-%d %H:%M', time.localtime(t)))\n"
            "print(' | '.join(out), s.interval())")
    done = subprocess.run([sys.executable, "-c", code, schedule, start, str(count)], capture_output=True, text=True,
                          env={"TZ": zone, "PYTHONPATH": str(REPO)}, check=True)
    return done.stdout.split()


@pytest.mark.parametrize(("schedule", "start", "expected", "interval"), [
    ("*/15 5-21 * * *", "2026-11-25 21:40", "2026-11-25 21:45 | 2026-11-26 05:00 | 2026-11-26 05:15", 900.0),
    ("*/15 5-21 * * *", "2026-11-25 21:45", "2026-11-26 05:00 | 2026-11-26 05:15 | 2026-11-26 05:30", 900.0),
    ("0,30 6-8 * * mon-fri", "2026-11-27 08:30", "2026-11-30 06:00 | 2026-11-30 06:30 | 2026-11-30 07:00", 1800.0),
    ("*/5 * 1 * *", "2026-11-30 23:58", "2026-12-01 00:00 | 2026-12-01 00:05 | 2026-12-01 00:10", 300.0),
    # Daylight saving starts in Sydney at 02:00 on 2026-10-04: the clock jumps to 03:00.
    ("30 1-4 * * *", "2026-10-04 01:00", "2026-10-04 01:30 | 2026-10-04 03:30 | 2026-10-04 04:30", 3600.0),
])
def test_the_schedule_knows_when_the_next_cycle_is_due(schedule, start, expected, interval):
    words = next_runs(schedule, start, 3)
    assert " ".join(words[:-1]) == expected.replace(" | ", " | ")
    assert float(words[-1]) == interval
