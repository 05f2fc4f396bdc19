"""The surplus basis: the policy's rules, its promise not to flap on its own load, the config that guards it,
the collectors that feed it consumption, and a real cycle that falls back to generation and says so once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreadpi import config, simulate, surplus, trace
from dreadpi.clock import Instant
from dreadpi.collectors import Context
from dreadpi.collectors.script import COLLECTOR as SCRIPT
from dreadpi.errors import CollectorError, ConfigError
from dreadpi.policy import PolicySettings, Previous, decide
from dreadpi.reading import Reading
from tests.conftest import dreadpi, write_config

T = 1_768_438_800.0
NOW = Instant(T, 39600)
SURPLUS = PolicySettings(basis="surplus", ac_watts=2000.0, margin=0.0, hysteresis=0, min_dwell=0)


def house(watts: float, consumption: float | None = None, net: float | None = None) -> Reading:
    extra = {}
    if consumption is not None:
        extra["consumption_watts"] = consumption
    if net is not None:
        extra["net_watts"] = net
    return Reading(watts, T - 60, "test", extra or None)


# -- the rule ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("generation", "consumption", "previous", "mode"), [
    # Idle house (300 W), AC in drm3 drawing 1500 W: spare = 3000 - 1800 + 1500 = 2700 W covers drm0's 2000 W.
    (3000, 1800, "drm3", "drm0"),
    # The same sun with a 2 kW pool pump and oven on: spare 3000 - 3800 + 1500 = 700 W: drm2.
    (3000, 3800, "drm3", "drm2"),
    # 1700 W spare covers drm3's 1500 W, not drm0's 2000 W.
    (2500, 2300, "drm3", "drm3"),
    # Exactly the issue: 600 W of export with the AC held at drm3: 600 + 1500 = 2100 W spare, release it.
    (2400, 1800, "drm3", "drm0"),
])
def test_thresholds_follow_from_the_ac_draw(generation, consumption, previous, mode):
    decision = decide(house(generation, consumption), Previous(previous, T - 3600), NOW, SURPLUS)
    assert decision.mode == mode, decision.reason
    assert decision.reason.startswith("spare ")
    assert not decision.failsafe and not decision.fallback


def test_net_flow_is_enough():
    by_net = decide(house(3000, net=-1200), Previous("drm3", T - 3600), NOW, SURPLUS)
    assert by_net.mode == "drm0" and "export 1200 W + AC ~1500 W" in by_net.reason


def test_the_margin_trades_import_for_comfort():
    reading, previous = house(2500, 2600), Previous("drm0", T - 3600)  # spare 1900 W, drm0 draws 2000 W
    assert decide(reading, previous, NOW, SURPLUS).mode == "drm3"
    assert decide(reading, previous, NOW, SURPLUS._replace(margin=0.1)).mode == "drm0"
    assert surplus.bounds(2000.0, 0.3) == pytest.approx((900.0, 1400.0))


def test_no_consumption_decides_on_generation_and_says_so_never_the_failsafe():
    decision = decide(house(800), Previous("drm2", T - 3600), NOW, SURPLUS)
    assert decision.mode == "drm0" and decision.fallback and not decision.failsafe
    assert decision.reason.startswith("no consumption in this reading, generation basis this cycle: 800 W")


def test_generation_basis_ignores_consumption():
    plain = PolicySettings(hysteresis=0, min_dwell=0)
    assert decide(house(800, 5000), Previous(), NOW, plain) == decide(house(800), Previous(), NOW, plain)


def test_the_learned_estimate_follows_the_consumption_step():
    learned = None
    # An AC of 2600 W configured as 2000 W: drm0 -> drm2 shows a step of 1300 W for half the rated input.
    learned = surplus.learn(learned, 2000.0, "drm0", 3000.0)
    learned = surplus.learn(learned, 2000.0, "drm2", 1700.0)
    assert learned["rated"] == pytest.approx(2000 + 0.3 * (2600 - 2000))
    # Household noise of the wrong sign teaches nothing.
    assert surplus.learn(learned, 2000.0, "drm0", 1000.0)["rated"] == learned["rated"]


# -- no flapping on its own load -----------------------------------------------------------------------------------


def _constant(generation: float, household: float, steps: int = 48) -> list:
    return [trace.Sample(T + i * 300, 39600, generation, None, household) for i in range(steps)]


@settings(max_examples=150, deadline=None)
@given(st.floats(100, 12000), st.floats(0, 12000), st.floats(0, 6000), st.sampled_from([0.0, 0.3, 0.6]),
       st.sampled_from([0.0, 150.0]), st.sampled_from([0.0, 1200.0]))
def test_a_constant_household_never_flaps_whatever_the_ac(ac_watts, generation, household, margin, hysteresis,
                                                          dwell):
    """The AC's own load is in the consumption the policy judges; with the shipped estimate it cancels out, so
    a constant house and sun settle in one change at most (from the first reading's drm0) and stay."""
    policy = PolicySettings(basis="surplus", ac_watts=ac_watts, margin=margin, hysteresis=hysteresis,
                            min_dwell=dwell)
    run = simulate.simulate(_constant(generation, household), policy, simulate.AirConditioner(ac_watts),
                            keep_steps=True)
    assert run.figures["switches"] <= 1, [mode for *_, mode in run.steps]


def test_without_an_estimate_the_ac_chases_its_own_load():
    """Why the estimate exists: export alone (ac_draw = none) releases the AC, sees the export fall, and
    restricts it again, as often as the dwell allows."""
    samples = _constant(5000.0, 900.0, steps=96)  # 4100 W left for the AC: enough for drm0 even at 2500 W
    ac = simulate.AirConditioner(2500.0)
    base = PolicySettings(basis="surplus", ac_watts=2500.0, margin=0.0, hysteresis=150, min_dwell=1200)
    assert simulate.simulate(samples, base, ac).figures["switches"] == 0
    assert simulate.simulate(samples, base._replace(ac_draw="none"), ac).figures["switches"] >= 10


# -- configuration -------------------------------------------------------------------------------------------------


def _problems(text: str) -> list:
    with pytest.raises(ConfigError) as caught:
        config.parse_text(text)
    return caught.value.problems


def test_config_keys_and_defaults():
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n")
    assert (cfg.policy.basis, cfg.policy.ac_watts, cfg.policy.ac_draw, cfg.policy.margin) == \
        ("generation", None, "allowed", 0.3)
    cfg = config.parse_text("[script]\ncommand = /bin/echo 1\n[policy]\nbasis = surplus\nac_watts = 2500\n")
    assert cfg.policy.basis == "surplus" and cfg.policy.ac_watts == 2500


@pytest.mark.parametrize(("text", "expected"), [
    ("[policy]\nbasis = surplus\n", "policy.ac_watts: basis = surplus needs the air conditioner's rated input"),
    ("[policy]\nbasis = spare\n", "policy.basis: must be one of generation, surplus; got 'spare'"),
    ("[policy]\nmargin = 1.5\n", "policy.margin: must be at most 1, got 1.5"),
    ("[policy]\nac_draw = guess\n", "policy.ac_draw: must be one of allowed, learned, none; got 'guess'"),
    ("[policy]\nac_watts = 0\n", "policy.ac_watts: must be at least 1, got 0"),
])
def test_config_mistakes_name_the_key(text, expected):
    problems = _problems("[script]\ncommand = /bin/echo 1\n" + text)
    assert any(expected in problem for problem in problems), problems


def test_check_config_rejects_surplus_with_a_source_that_never_has_consumption(tmp_path):
    cfg = tmp_path / "enphase.cfg"
    cfg.write_text("[collector]\nsource = enphase\n[enphase]\napi_key = " + "a" * 32 + "\nclient_id = " + "b" * 32 +
                   "\nclient_secret = " + "c" * 32 + "\nsystem_id = 123\n[policy]\nbasis = surplus\nac_watts = 2500\n"
                   "max_age = 3600\n")
    done = dreadpi("check-config", str(cfg))
    assert done.returncode == 2
    assert "policy.basis: surplus needs household consumption, and source enphase never gives it" in done.stderr


# -- collectors ----------------------------------------------------------------------------------------------------


def _ctx() -> Context:
    return Context(settings={}, state_dir="/nonexistent", now=T, max_age=1000, timeout=5, notes=[], secrets=[])


@pytest.mark.parametrize(("out", "watts", "at", "extra"), [
    (b"550\n", 550.0, T, None),
    (b"550 1768438000\n", 550.0, 1768438000.0, None),
    (b"550 consumption=420\n", 550.0, T, {"consumption_watts": 420.0}),
    (b"550 1768438000 consumption=420 net=-130\n", 550.0, 1768438000.0,
     {"consumption_watts": 420.0, "net_watts": -130.0}),
    (b"550 net=-130\n", 550.0, T, {"net_watts": -130.0}),
])
def test_script_output_forms(out, watts, at, extra):
    reading = SCRIPT.parse(out, _ctx())
    assert (reading.watts, reading.at, reading.extra) == (watts, at, extra)


@pytest.mark.parametrize(("out", "message"), [
    (b"550 colour=3\n", "unexpected field 'colour=3'"),
    (b"550 consumption=lots\n", "consumption= expects watts, got 'lots'"),
    (b"550 consumption=-5\n", "consumption= is not a plausible figure"),
    (b"consumption=5 550\n", "expected WATTS or WATTS UNIX_TIMESTAMP"),
    (b"550 consumption=1 consumption=2\n", "once each"),
])
def test_script_output_mistakes(out, message):
    with pytest.raises(CollectorError) as caught:
        SCRIPT.parse(out, _ctx())
    assert message in str(caught.value)


def test_pvoutput_export_and_plot_log_carry_consumption(tmp_path: Path):
    (tmp_path / "pvo.csv").write_text("Date,Time,Energy,Efficiency,Power,Average,Normalised,Energy Used,Power Used\n"
                                      "20260115,12:00,1000,0.1,2550,500,0.1,900,780\n")
    (tmp_path / "plot.log").write_text("2026-01-15T12:00:00+11:00,2550,drm0,100,3280,730\n"
                                       "2026-01-15T12:05:00+11:00,2500,drm3,75,,-200\n")
    (tmp_path / "house.csv").write_text("timestamp,watts,consumption\n2026-01-15T12:00:00+11:00,2550,780\n")
    assert trace.load(str(tmp_path / "pvo.csv"), "Australia/Sydney")[0].consumption == 780
    assert trace.load(str(tmp_path / "house.csv"))[0].consumption == 780
    logged = trace.load(str(tmp_path / "plot.log"))
    assert [(s.consumption, s.net, s.mode) for s in logged] == [(3280, 730, "drm0"), (None, -200, "drm3")]
    # The log's consumption includes the AC as it ran under the logged mode: the simulator takes it out.
    assert simulate._household(logged[0], 2550.0, 2500.0) == pytest.approx(780)
    assert simulate._household(logged[1], 2500.0, 2500.0) == pytest.approx(2300 - 1875)


# -- a real cycle --------------------------------------------------------------------------------------------------


def _state(directory: Path) -> dict:
    return json.loads((directory / "state" / "state.json").read_text())


def test_cycle_on_surplus_falls_back_and_warns_once(world_dir: Path):
    policy = {"basis": "surplus", "ac_watts": "2000", "margin": "0", "min_dwell": "0", "hysteresis": "0"}
    metered = world_dir / "metered"
    metered.write_text("#!/bin/sh\necho 3000 consumption=1300\n")
    metered.chmod(0o755)
    with_house = write_config(world_dir, {"script": {"command": str(metered)}, "policy": policy})
    done = dreadpi("run", "-c", str(with_house))
    assert done.returncode == 0, done.stderr
    assert "drm0 (100%): spare 3700 W (export 1700 W + AC ~2000 W)" in done.stdout  # first run: AC at 100 %
    assert _state(world_dir)["extra"] == {"consumption_watts": 1300.0}
    without = write_config(world_dir, {"script": {"command": "/bin/echo 600"}, "policy": policy}, name="bare.cfg")
    for _ in range(3):
        done = dreadpi("run", "-c", str(without))
        assert done.returncode == 0, done.stderr
        assert "no consumption in this reading, generation basis this cycle" in done.stdout
    log = (world_dir / "log" / "error.log").read_text()
    assert log.count("policy.basis is surplus but the reading has no consumption") == 1
    assert dreadpi("run", "-c", str(with_house)).returncode == 0  # consumption is back ...
    assert dreadpi("run", "-c", str(without)).returncode == 0  # ... and lost again: worth one more line
    log = (world_dir / "log" / "error.log").read_text()
    assert log.count("policy.basis is surplus but the reading has no consumption") == 2
    plot = (world_dir / "log" / "plot.log").read_text().splitlines()
    assert plot[0].endswith(",3000,drm0,100,1300,") and time.time() > 0


# -- the role ------------------------------------------------------------------------------------------------------


def test_the_role_exposes_the_surplus_keys_with_the_programs_defaults():
    """Each new policy key flows defaults -> template -> argument spec like the other dreadpi_policy_* ones."""
    import jinja2
    import yaml

    role = Path(__file__).resolve().parent.parent / "roles" / "dreadpi"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    template = (role / "templates" / "dreadpi.cfg.j2").read_text()
    section = "[policy]" + template.split("[policy]", 1)[1].split("\n[", 1)[0]  # the rest needs Ansible's filters
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701 (an INI file, not HTML)
    rendered = "[script]\ncommand = /bin/echo 1\n" + env.from_string(section).render(
        **dict(defaults, dreadpi_policy_basis="surplus", dreadpi_policy_ac_watts=2500))
    policy = config.parse_text(rendered).policy
    assert (policy.basis, policy.ac_watts, policy.ac_draw, policy.margin) == ("surplus", 2500, "allowed", 0.3)
    shipped = PolicySettings()
    for key in ("basis", "ac_draw", "margin"):
        assert defaults[f"dreadpi_policy_{key}"] == getattr(shipped, key) == spec[f"dreadpi_policy_{key}"]["default"]
    assert defaults["dreadpi_policy_ac_watts"] == "" and "dreadpi_policy_ac_watts" in spec


def test_plot_draws_consumption_and_net_when_the_log_has_them(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from dreadpi import plot

    log = tmp_path / "plot.log"
    log.write_text("2026-01-15T10:00:00+11:00,2800,drm0,100,3100,300\n2026-01-15T12:00:00+11:00,4000,drm0,100,,-800\n"
                   "2026-01-15T14:00:00+11:00,3000,drm3,75\n")
    samples = trace.load(str(log))
    assert plot.flows(samples) == {samples[0].epoch: (3100, 300), samples[1].epoch: (3200, -800)}
    done = dreadpi("plot", str(log), "-o", str(tmp_path / "log.png"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_command_shows_both_bases_and_sweeps_them():
    path = str(Path(__file__).resolve().parent.parent / "data" / "traces" / "greensboro-5kw-house-5min.csv.gz")
    done = dreadpi("simulate", path, "--ac-watts", "2500", "--json")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    assert set(runs) == {"generation", "surplus", "original", "no control"}
    for figures in runs.values():
        assert {"household_import_kwh", "export_kwh", "daylight_ac_kwh", "daylight_import_kwh",
                "daylight_floor_kwh"} <= set(figures)
    swept = dreadpi("simulate", path, "--ac-watts", "2500", "--sweep", "basis=generation,surplus")
    assert swept.returncode == 0, swept.stderr
    assert "basis=generation  basis=surplus" in swept.stdout and "floor at that AC energy" in swept.stdout
    bad = dreadpi("simulate", path, "--sweep", "basis=gross")
    assert bad.returncode == 64 and "--sweep: basis takes generation, surplus" in bad.stderr
    bad = dreadpi("simulate", path, "--ac-load", "1.5")
    assert bad.returncode == 64 and "--ac-load: a share of the rated input, at most 1" in bad.stderr


def test_sweeping_a_surplus_setting_means_the_surplus_basis():
    # 1500 W of sun, 1000 W of house: the generation basis allows drm0 (the part-load AC draws 1500 W); the
    # surplus basis sees 500 W spare and holds drm2 (1250 W) for the hour.
    samples = _constant(1500.0, 1000.0, steps=12)
    ac = simulate.AirConditioner(2500.0, None, 0.6)
    assert simulate.simulate(samples, PolicySettings(), ac).figures["ac_kwh"] == pytest.approx(1.5)
    runs = simulate.sweep(samples, PolicySettings(), ac, "margin", [0.0, 0.5])
    assert [run.name for run in runs] == ["margin=0", "margin=0.5"]
    assert runs[0].figures["ac_kwh"] == pytest.approx(1.25)


def test_pvoutput_consumption_drives_the_surplus_basis(world, world_dir: Path, certs) -> None:  # noqa: ANN001
    """A PVOutput system uploading consumption: getstatus's sixth field reaches the policy, no extra request."""
    from tests.apiworld import ApiServer, Reply
    from tests.test_collectors import PV_KEY, STATUS, _status_line

    line, _ = _status_line("Australia/Sydney", 2, "2450")  # 2450 W of sun, the house using 321 W
    routes = {STATUS: lambda r: Reply(200, line)}
    config = write_config(world_dir, {
        "collector": {"source": "pvoutput", "timeout": "6"},
        "pvoutput": {"api_key": PV_KEY, "system_id": "1234", "timezone": "Australia/Sydney"},
        "policy": {"basis": "surplus", "ac_watts": "2500", "min_dwell": "0"}})
    with ApiServer("pvoutput.org", *certs.pair("pvoutput.org"), routes) as server:
        run = world.dreadpi("run", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert len(server.calls(STATUS)) == 1
    # First cycle, nothing asserted: the AC counts at its full 2500 W, so spare = (2450 - 321) + 2500 W, above
    # drm0's (1 - margin 0.3) x 2500 = 1750 W.
    assert "drm0 (100%): spare 4629 W (export 2129 W + AC ~2500 W)" in run.stdout
