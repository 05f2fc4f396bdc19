"""Whole cycles through the real `dreadpi` command, as cron runs it: bad collectors end in the failsafe with
their reason recorded, nothing is half-written, and a second cycle never acts while one is running."""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import dreadpi, write_config


def run(cfg: Path) -> tuple:
    result = dreadpi("run", "-c", str(cfg))
    return result, status(cfg)


def status(cfg: Path) -> dict:
    result = dreadpi("status", "--json", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pins(directory: Path) -> dict:
    return json.loads((directory / "state" / "sim-pins.json").read_text())


def error_log(directory: Path) -> str:
    return (directory / "log" / "error.log").read_text()


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_normal_cycle(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}})
    result, info = run(cfg)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d drm2 \(50%\): 350 W is below threshold_low \(400 W\)\n",
                        result.stdout)
    assert info["mode"] == "drm2" and info["percent"] == 50 and info["watts"] == 350
    assert info["relays"] == [1, 0] and info["override"] is None
    assert info["reason"] == "350 W is below threshold_low (400 W)"
    for key in ("reading_at", "since", "updated_at", "version"):
        assert info[key]
    assert pins(world_dir) == {"17": 1, "27": 0}
    plot = (world_dir / "log" / "plot.log").read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d,350,drm2,50\n", plot)


def test_active_low_inverts_the_pin_levels(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}, "relays": {"active_low": "yes"}})
    result, info = run(cfg)
    assert info["relays"] == [1, 0] and info["pin_levels"] == [0, 1]
    assert pins(world_dir) == {"17": 0, "27": 1}


def test_a_timestamped_reading_that_is_stale_gets_the_failsafe(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350 1700000000"}})
    result, info = run(cfg)
    assert result.returncode == 4
    assert info["failsafe"] and info["mode"] == "drm0"
    assert "s old (max_age 1000 s)" in info["reason"]
    # Every failsafe cycle leaves its reason in the error log, a refused reading too.
    assert "s old (max_age 1000 s)" in error_log(world_dir)
    assert info["health"]["problem"] == "stale" and info["health"]["consecutive_failsafe"] == 1


BAD_COLLECTORS = [
    ("/bin/echo abc", "expected numbers, got 'abc'"),
    ("/bin/echo -5", "watts is negative (-5)"),
    ("/bin/echo nan", "watts is not finite"),
    ("/bin/echo 1e400", "watts is not finite"),
    ("/bin/echo 1 2 3", "expected WATTS or WATTS UNIX_TIMESTAMP"),
    ("/bin/echo 200000", "exceeds max_watts"),
    ("/bin/true", "expected WATTS or WATTS UNIX_TIMESTAMP, got ''"),
    ("/bin/false", "exited with status 1"),
    ("/usr/bin/yes", "printed more than 65536 bytes"),
    ("/bin/sleep 30", "timed out after 2 s"),  # the only one a source that does not answer causes: unreachable
    ("/nonexistent/collector", "cannot start /nonexistent/collector"),
]


@pytest.mark.parametrize(("command", "cause"), BAD_COLLECTORS, ids=[c for c, _ in BAD_COLLECTORS])
def test_every_collector_failure_ends_in_the_failsafe_with_its_reason(world_dir, command, cause):
    good = write_config(world_dir, {"script": {"command": "/bin/echo 100"}, "collector": {"timeout": "2"}})
    assert run(good)[1]["relays"] == [1, 0]  # drm2 asserted first, so the failsafe has to release it
    bad = write_config(world_dir, {"script": {"command": command}, "collector": {"timeout": "2"}}, name="bad.cfg")
    started = time.monotonic()
    result, info = run(bad)
    assert time.monotonic() - started < 10
    assert result.returncode == 4, result.stderr
    assert info["mode"] == "drm0" and info["failsafe"] and info["relays"] == [0, 0]
    assert f"failsafe (drm0): script: {cause}" in info["reason"] or cause in info["reason"], info["reason"]
    assert pins(world_dir) == {"17": 0, "27": 0}
    assert cause in error_log(world_dir)
    assert info["health"]["problem"] == ("unreachable" if "timed out" in cause else "bad-answer")
    assert info["watts"] is None


def test_a_collector_leaving_a_hung_child_ends_in_the_failsafe(world_dir):
    sneaky = script(world_dir, "sneaky", "(/bin/sleep 3003.5 &)\necho 900\n")
    cfg = write_config(world_dir, {"script": {"command": sneaky}, "collector": {"timeout": "1"}})
    result, info = run(cfg)
    assert result.returncode == 4
    assert "timed out after 1 s" in info["reason"]


def test_failsafe_hold_keeps_the_mode(world_dir):
    write_config(world_dir, {"script": {"command": "/bin/echo 500"}})
    run(world_dir / "dreadpi.cfg")
    cfg = write_config(world_dir, {"script": {"command": "/bin/false"}, "policy": {"failsafe": "hold"}})
    result, info = run(cfg)
    assert result.returncode == 4
    assert info["mode"] == "drm3" and info["reason"].startswith("failsafe (hold drm3)")


def test_a_second_cycle_while_one_runs_touches_nothing(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}})
    run(cfg)
    state = world_dir / "state" / "state.json"
    before = (state.read_bytes(), state.stat().st_mtime_ns, (world_dir / "log" / "plot.log").read_bytes())
    fd = os.open(world_dir / "state" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = dreadpi("run", "-c", str(cfg))
    finally:
        os.close(fd)
    assert result.returncode == 3
    assert "another dreadpi cycle is running" in result.stderr
    assert before == (state.read_bytes(), state.stat().st_mtime_ns, (world_dir / "log" / "plot.log").read_bytes())


@pytest.mark.parametrize("garbage", [b"{not json", b"[]", b'{"mode": "drm9", "since": 1}', b"\xff\xfe", b""])
def test_a_corrupt_state_file_is_set_aside_not_fatal(world_dir, garbage):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}})
    (world_dir / "state").mkdir()
    (world_dir / "state" / "state.json").write_bytes(garbage)
    result, info = run(cfg)
    assert result.returncode == 0, result.stderr
    assert info["mode"] == "drm2"
    assert (world_dir / "state" / "state.json.corrupt").read_bytes() == garbage
    assert "starting afresh" in error_log(world_dir)


def test_pins_that_lost_their_levels_are_re_driven(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}})
    run(cfg)
    (world_dir / "state" / "sim-pins.json").unlink()  # what a reboot does to real pins
    result, info = run(cfg)
    assert result.returncode == 0
    assert "relays read back as not driven, not 1 0 as last driven (a reboot?); re-driving" in result.stderr
    assert pins(world_dir) == {"17": 1, "27": 0}
    assert "re-driving" in error_log(world_dir)


def test_dwell_holds_between_cycles_and_since_is_kept(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}, "policy": {"min_dwell": "600"}})
    first = run(cfg)[1]
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 900"}, "policy": {"min_dwell": "600"}})
    result, second = run(cfg)
    assert second["mode"] == "drm2" and "holding drm2 for min_dwell" in second["reason"]
    assert second["since"] == first["since"]


def test_override_applies_now_shows_in_status_and_clears(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 100"}, "policy": {"min_dwell": "3600"}})
    assert run(cfg)[1]["mode"] == "drm2"
    result = dreadpi("override", "drm0", "--for", "2h", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "manual override to drm0" in result.stdout
    info = status(cfg)
    assert info["mode"] == "drm0" and info["override"]["mode"] == "drm0" and pins(world_dir) == {"17": 0, "27": 0}
    until = info["override"]["until"]
    assert run(cfg)[1]["override"]["until"] == until  # a cron cycle keeps it
    result = dreadpi("override", "clear", "-c", str(cfg))
    assert result.returncode == 0
    info = status(cfg)
    assert info["override"] is None and info["mode"] == "drm2"


def test_override_refuses_what_the_board_cannot_do(world_dir):
    cfg = write_config(world_dir)
    assert dreadpi("override", "drm1", "--for", "1h", "-c", str(cfg)).returncode == 64
    assert dreadpi("override", "drm0", "-c", str(cfg)).returncode == 64
    assert "--for" in dreadpi("override", "drm0", "-c", str(cfg)).stderr


def test_status_before_any_cycle(world_dir):
    info = status(write_config(world_dir))
    assert info["mode"] is None and info["reason"] == "no cycle has run yet"


def test_a_cycle_does_not_import_what_it_does_not_use(world_dir):
    cfg = write_config(world_dir)
    code = ("import sys; from dreadpi.cli import main; rc = main(['run', '-c', sys.argv[1]]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'requests', 'urllib3', 'RPi', 'ssl', 'http'}))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(Path(__file__).parent.parent)}, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_state_file_is_replaced_never_rewritten_in_place(world_dir):
    cfg = write_config(world_dir, {"script": {"command": "/bin/echo 350"}})
    run(cfg)
    inode = (world_dir / "state" / "state.json").stat().st_ino
    run(cfg)
    assert (world_dir / "state" / "state.json").stat().st_ino != inode
    assert not [p for p in (world_dir / "state").iterdir() if p.name.startswith(".state.json")]
