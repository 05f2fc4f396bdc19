"""`dreadpi simulate` and `dreadpi plot`: trace formats, the same decisions as `dreadpi run`, properties of the
policy over whole sequences, the benchmark year's claim, and a real PNG."""

from __future__ import annotations

import gzip
import json
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreadpi import modes, simulate, trace
from dreadpi.policy import PolicySettings
from tests.conftest import REPO, dreadpi, write_config

YEAR = REPO / "data" / "traces"
AC = simulate.AirConditioner(2000.0)


def _samples(watts: list, step: float = 300.0, start: float = 1_750_000_000.0) -> list:
    return [trace.Sample(start + i * step, 36000, w) for i, w in enumerate(watts)]


# -- formats -------------------------------------------------------------------------------------------------------


def test_plain_iso_epoch_plot_log_and_pvoutput_export_read_the_same_moments(tmp_path: Path) -> None:
    (tmp_path / "iso.csv").write_text("timestamp,watts\n2026-01-15T12:00:00+11:00,550\n2026-01-15T12:05:00+11:00,NaN\n")
    (tmp_path / "epoch.csv").write_text("1768438800,550\n1768439100,\n")
    (tmp_path / "plot.log").write_text("2026-01-15T12:00:00+11:00,550,drm3,75\n2026-01-15T12:05:00+11:00,,drm0,100\n")
    (tmp_path / "pvo.csv").write_text("Date,Time,Energy,Efficiency,Power,Average,Normalised\n"
                                      "15/01/26,12:00PM,1000,0.1,550,500,0.1\n20260115,12:05,1001,0.1,NaN,0,0\n")
    with gzip.open(tmp_path / "iso.csv.gz", "wt") as handle:
        handle.write((tmp_path / "iso.csv").read_text())
    for name in ("iso.csv", "epoch.csv", "plot.log", "pvo.csv", "iso.csv.gz"):
        zone = "Australia/Sydney" if name in ("pvo.csv", "epoch.csv") else ""
        samples = trace.load(str(tmp_path / name), zone)
        assert [(s.epoch, s.watts) for s in samples] == [(1768438800.0, 550.0), (1768439100.0, None)], name
        assert samples[0].offset == 39600, name
    assert [s.mode for s in trace.load(str(tmp_path / "plot.log"))] == ["drm3", "drm0"]


@pytest.mark.parametrize(("text", "expected"), [
    ("timestamp,watts\n2026-01-15T12:00:00Z,lots\n", "bad.csv:2: could not convert string to float"),
    ("2026-13-45 noon,5\n", "bad.csv:1: not a timestamp"),
    ("Date,Time,Energy\n20260115,12:00,5\n", "bad.csv: a PVOutput export needs a Power column"),
    ("# nothing\n", "bad.csv: no samples"),
])
def test_bad_traces_name_the_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(trace.TraceError) as caught:
        trace.load(str(tmp_path / "bad.csv"))
    assert expected in str(caught.value)


# -- the simulation ------------------------------------------------------------------------------------------------


def test_a_gap_longer_than_max_age_behaves_as_stale_data() -> None:
    samples = _samples([900.0] * 10) + _samples([900.0], start=1_750_000_000.0 + 20 * 300)  # 10 steps missing
    run = simulate.simulate(samples, PolicySettings(max_age=1000, min_dwell=0), AC)
    steps = run.figures["steps"]
    assert steps == 21
    # Readings age 300 s per step: at most 3 steps after the last sample they are still fresh, then failsafe.
    assert run.figures["failsafe_share"] == pytest.approx(7 / 21, abs=1e-4)


def test_energy_accounting_of_one_hour() -> None:
    # 1 kW of sun for an hour, 2 kW AC in drm0 (above 700 W): 2 kWh used, 1 kWh of it solar.
    run = simulate.simulate(_samples([1000.0] * 12), PolicySettings(min_dwell=0), AC)
    assert run.figures["ac_kwh"] == pytest.approx(2.0) and run.figures["solar_share"] == pytest.approx(0.5)
    baseline = simulate.simulate(_samples([300.0] * 12), None, AC)
    assert baseline.figures["time_in_mode"] == {"drm0": 1.0} and baseline.figures["import_kwh"] == pytest.approx(1.7)


readings = st.lists(st.one_of(st.none(), st.just(float("nan")), st.floats(-50, 3000)), min_size=2, max_size=60)
policies = st.builds(lambda h, d, f: PolicySettings(hysteresis=h, min_dwell=d, failsafe=f),
                     st.sampled_from([0.0, 50.0, 150.0]), st.sampled_from([0.0, 600.0, 1200.0]),
                     st.sampled_from(["drm0", "drm3"]))


@settings(max_examples=200, deadline=None)
@given(readings, policies)
def test_properties_over_sequences(watts: list, policy: PolicySettings) -> None:
    run = simulate.simulate(_samples(watts), policy, AC, keep_steps=True)
    previous_mode, since = None, 0.0
    for (epoch, _, _, mode), raw in zip(run.steps, watts):
        assert mode in modes.ORDER  # exactly one mode, one the board has
        invalid = raw is None or raw != raw or raw < 0
        if invalid:
            assert mode == policy.failsafe  # every invalid reading: the failsafe
        elif previous_mode is not None and mode != previous_mode:
            assert epoch - since >= policy.min_dwell, (epoch - since)  # never inside the dwell but to the failsafe
        if mode != previous_mode:
            previous_mode, since = mode, epoch


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 3000), policies)
def test_a_constant_reading_never_flaps(watts: float, policy: PolicySettings) -> None:
    run = simulate.simulate(_samples([watts] * 30), policy, AC)
    assert run.figures["switches"] == 0


def test_the_benchmark_year_favours_dreadpi_over_the_original() -> None:
    for size in ("3", "5", "8"):
        samples = trace.load(str(YEAR / f"greensboro-{size}kw-5min.csv.gz"))
        assert len(samples) == 105120
        ours, original, nothing = simulate.compare(samples, PolicySettings(), AC)
        assert ours.figures["switches_per_day"] < original.figures["switches_per_day"], size
        assert ours.figures["solar_share"] >= original.figures["solar_share"], size
        assert original.figures["solar_share"] > nothing.figures["solar_share"], size


def test_simulation_and_dreadpi_run_decide_the_same(world_dir: Path) -> None:
    """The same readings through the real command (script collector, real state file) and the simulator."""
    watts = [300, 420, 460, 560, 720, 760, 860, 640, 390, 560, 610, 900, 100]
    now = time.time()
    config = write_config(world_dir, {"policy": {"min_dwell": "0", "hysteresis": "150"}})
    decided = []
    template = config.read_text()
    for value in watts:
        config.write_text(template.replace("/bin/echo 550", f"/bin/echo {value}"))
        done = dreadpi("run", "-c", str(config))
        assert done.returncode == 0, done.stderr
        decided.append(json.loads((world_dir / "state" / "state.json").read_text())["mode"])
    run = simulate.simulate(_samples([float(w) for w in watts], start=now), PolicySettings(min_dwell=0,
                            hysteresis=150), AC, step=300, keep_steps=True)
    assert [mode for *_, mode in run.steps] == decided


# -- the command ---------------------------------------------------------------------------------------------------


def test_simulate_command_table_json_and_sweep() -> None:
    path = str(YEAR / "greensboro-5kw-5min.csv.gz")
    table = dreadpi("simulate", path)
    assert table.returncode == 0, table.stderr
    assert "dreadpi  original  no control" in table.stdout and "relay switches / day" in table.stdout
    machine = dreadpi("simulate", path, "--json", "--ac-watts", "3000", "--demand", "10:00-20:00")
    figures = json.loads(machine.stdout)
    assert set(figures["runs"]) == {"dreadpi", "original", "no control"} and figures["ac_watts"] == 3000
    assert figures["runs"]["no control"]["ac_kwh"] == pytest.approx(3 * 10 * 365, rel=1e-3)
    swept = dreadpi("simulate", path, "--sweep", "hysteresis=0,150,300")
    assert "hysteresis=0  hysteresis=150  hysteresis=300" in swept.stdout
    bad = dreadpi("simulate", path, "--sweep", "colour=1")
    assert bad.returncode == 64 and "--sweep: expected NAME=V1,V2" in bad.stderr


def _png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_of_the_day(tmp_path: Path, world_dir: Path) -> None:
    out = tmp_path / "day.png"
    done = dreadpi("plot", str(YEAR / "greensboro-5kw-5min.csv.gz"), "-o", str(out), "--day", "2025-03-14")
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 20_000 and _png_size(out) == (1200, 700)
    # A Pi's plot log, as it happened.
    log = tmp_path / "plot.log"
    log.write_text("".join(f"2026-01-15T{h:02d}:00:00+11:00,{w},{m},{modes.PERCENT[m]}\n"
                           for h, w, m in ((8, 300, "drm2"), (10, 800, "drm0"), (12, 650, "drm3"))))
    done = dreadpi("plot", str(log), "-o", str(tmp_path / "log.png"))
    assert done.returncode == 0, done.stderr
    assert _png_size(tmp_path / "log.png") == (1200, 700)
    missing = dreadpi("plot", str(log), "-o", str(tmp_path / "x.png"), "--day", "2020-01-01")
    assert missing.returncode == 2 and "no data that day; the data covers 2026-01-15 to 2026-01-15" in missing.stderr


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None; from dreadpi.cli import main; "
            f"sys.exit(main(['plot', {str(YEAR / 'greensboro-3kw-5min.csv.gz')!r}, '-o', 'x.png']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "plot needs matplotlib, which is optional: pip install 'dreadpi[plot]'" in done.stderr
    assert not (tmp_path / "x.png").exists()
