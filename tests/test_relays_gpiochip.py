"""Relays on the kernel's gpiochip device, with the real libraries, on an emulated kernel (tests/gpiochip).

The real lgpio C library and the real rpi-lgpio 0.6 Python code (what Raspberry Pi OS ships as RPi.GPIO), and
dreadpi's own `gpiochip` backend, drive a Pi Zero 2 W's, a Pi 4's and a Pi 5's header (both Pi 5 chip
numberings) through an LD_PRELOAD shim that answers the gpiochip uAPI and records every change of a line's
direction and level. Every cycle is the real `dreadpi run` in its own process, as cron runs it. The recorded
history must show exactly one level change per relay change, and never a relay pin turned into an input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root, write_config
from tests.gpiochip import FakePi, ensure_libraries

PINS = (17, 27)
# watts -> mode with the default thresholds (400/700), min_dwell 0, hysteresis 50
SEQUENCE = (900, 550, 550, 350, 350, 550, 900, 350, 900, 900)
MODES = {900: "drm0", 550: "drm3", 350: "drm2"}
PATTERNS = {"drm0": (0, 0), "drm3": (0, 1), "drm2": (1, 0)}


@pytest.fixture(scope="module")
def lgpio_site() -> Path:
    require_root()
    return ensure_libraries()


def python_path(provider: str, site: Path) -> str:
    """rpi-lgpio first on the path for that provider; the venv's register RPi.GPIO otherwise."""
    return f"{site}:{REPO}" if provider == "rpi-lgpio" else str(REPO)


def setup_pi(world_dir: Path, provider: str, active_low: bool = False, hold: str = "auto") -> tuple:
    watts = world_dir / "watts"
    watts.write_text("900\n")
    watts.chmod(0o644)
    cfg = write_config(world_dir, {"script": {"command": f"/bin/cat {watts}"},
                                   "relays": {"backend": "gpiochip" if provider == "gpiochip" else "rpi-gpio",
                                              "active_low": "yes" if active_low else "no", "hold": hold}})
    return cfg, watts


def cycle(pi: FakePi, cfg: Path, site: Path, provider: str = "rpi-lgpio") -> subprocess.CompletedProcess:
    return pi.run([sys.executable, "-m", "dreadpi", "run", "-c", str(cfg)],
                  env={"PYTHONPATH": python_path(provider, site), "PATH": "/usr/bin:/bin"})


def relay_events(pi: FakePi) -> list:
    return [event for event in pi.history() if event.line in PINS and event.chip == pi.header_chip]


def level_changes(events: list, pin: int) -> list:
    return [event for event in events if event.line == pin and event.kind == "level"]


def to_input(events: list) -> list:
    return [event for event in events if event.kind == "dir" and event.detail == "out->in"]


def new_level(event) -> int:  # noqa: ANN001
    return int(event.detail.split("->")[1])


def expected_changes(sequence: tuple, active_low: bool, start: dict) -> dict:
    """How often each pin's level must change, from what the kernel had before the first cycle."""
    counts = dict.fromkeys(PINS, 0)
    levels = dict(start)
    for watts in sequence:
        for pin, bit in zip(PINS, PATTERNS[MODES[watts]]):
            level = int(bool(bit) != active_low)
            if levels[pin] != level:
                counts[pin] += 1
                levels[pin] = level
    return counts


@pytest.mark.parametrize(("provider", "model", "active_low"), [
    ("rpi-lgpio", "zero2w", False),
    ("rpi-lgpio", "pi4", True),
    ("rpi-lgpio", "pi5", False),
    ("rpi-lgpio", "pi5-old", True),
    ("gpiochip", "pi5", True),
    ("gpiochip", "pi4", False),
])
def test_many_cycles_change_each_pin_only_when_its_relay_must(lgpio_site, world_dir, provider, model, active_low):
    cfg, watts = setup_pi(world_dir, provider, active_low)
    with FakePi(model=model, persist=True) as pi:
        start = {pin: pi.lines()[pin].level for pin in PINS}
        for reading in SEQUENCE:
            watts.write_text(f"{reading}\n")
            result = cycle(pi, cfg, lgpio_site, provider)
            assert result.returncode == 0, result.stderr
            assert f" {MODES[reading]} " in result.stdout
            state = pi.lines()
            for pin, bit in zip(PINS, PATTERNS[MODES[reading]]):
                assert state[pin].direction == "out", state[pin]
                assert state[pin].level == int(bool(bit) != active_low), (reading, state[pin])
                assert not state[pin].used  # between cycles the kernel keeps it, nobody holds it
        events = relay_events(pi)
        # Never an input: the only direction change of each relay pin is its first claim.
        directions = [event for event in events if event.kind == "dir"]
        assert sorted((e.line, e.detail) for e in directions) == [(pin, "in->out") for pin in PINS], directions
        wanted = expected_changes(SEQUENCE, active_low, start)
        for pin in PINS:
            assert len(level_changes(events, pin)) == wanted[pin], (pin, level_changes(events, pin))
        # Cascade wiring: between drm2 and drm3 the relay that energises goes first, so the board passes through
        # drm2 (relay 1 energised cuts relay 2 off) and never through drm0.
        per_cycle: dict = {}
        for event in sorted(level_changes(events, 17) + level_changes(events, 27), key=lambda e: e.seq):
            per_cycle.setdefault(event.pid, []).append(int(bool(new_level(event)) != active_low))
        assert [1, 0] in per_cycle.values() and [0, 1] not in per_cycle.values(), per_cycle
        status = pi.run([sys.executable, "-m", "dreadpi", "status", "--json", "-c", str(cfg)],
                        env={"PYTHONPATH": python_path(provider, lgpio_site)})
        board = json.loads(status.stdout)["board"]
        label = next(chip.label for chip in pi.board.chips if chip.number == pi.header_chip)
        assert board["chip"] == f"/dev/gpiochip{pi.header_chip} ({label})"
        assert board["kept_by"] == "kernel" and board["kernel_keeps_outputs"] is True
        assert board["model"].startswith("Raspberry Pi")
        if provider == "rpi-lgpio":
            assert board["library"] == "python3-rpi-lgpio"


def test_rpi_lgpios_own_read_would_drop_the_relay_which_dreadpi_avoids(lgpio_site, world_dir):
    """The defect this design avoids, shown with the real library: setup(OUT) without `initial` claims the
    line as an input first. dreadpi's cycles on the same persisted line record no such event."""
    cfg, watts = setup_pi(world_dir, "rpi-lgpio")
    watts.write_text("350\n")
    with FakePi(model="pi4", persist=True) as pi:
        assert cycle(pi, cfg, lgpio_site).returncode == 0
        assert cycle(pi, cfg, lgpio_site).returncode == 0
        assert not to_input(relay_events(pi))
        naive = "import RPi.GPIO as G; G.setwarnings(False); G.setmode(G.BCM); G.setup(17, G.OUT)"
        pi.run([sys.executable, "-c", naive], env={"PYTHONPATH": str(lgpio_site), "RPI_LGPIO_CHIP": "0"})
        assert [e.line for e in to_input(relay_events(pi))] == [17]


def test_after_a_reboot_the_pins_are_driven_again(lgpio_site, world_dir):
    cfg, watts = setup_pi(world_dir, "rpi-lgpio")
    watts.write_text("350\n")
    with FakePi(model="pi5", persist=True) as pi:
        assert cycle(pi, cfg, lgpio_site).returncode == 0
        pi.reboot()
        assert pi.lines()[17].direction == "in"
        result = cycle(pi, cfg, lgpio_site)
        assert result.returncode == 0
        assert "relays read back as not driven, not 1 0 as last driven (a reboot?); re-driving" in result.stderr
        state = pi.lines()
        assert (state[17].direction, state[17].level, state[27].direction) == ("out", 1, "out")


@pytest.mark.parametrize("provider", ["rpi-lgpio", "gpiochip"])
def test_a_pin_held_by_another_program_is_a_clear_error_and_nothing_is_driven(lgpio_site, world_dir, provider):
    cfg, watts = setup_pi(world_dir, provider)
    watts.write_text("350\n")
    with FakePi(model="pi4", persist=True) as pi, pi.hold(27, consumer="other-app"):
        result = cycle(pi, cfg, lgpio_site, provider)
        assert result.returncode == 5, result.stderr
        assert "GPIO27 is in use by 'other-app'" in result.stderr
        assert "Traceback" not in result.stderr
        log = (world_dir / "log" / "error.log").read_text()
        assert "GPIO27 is in use by 'other-app'" in log and "wanted drm2" in log
        assert not [e for e in relay_events(pi) if e.line == 17]  # relay 1 untouched too


@pytest.mark.parametrize("persist", [False, None])
def test_a_kernel_that_releases_outputs_is_refused_without_the_hold_service(lgpio_site, world_dir, persist):
    cfg, watts = setup_pi(world_dir, "rpi-lgpio")
    watts.write_text("350\n")
    # persist None: a kernel without the parameter, such as mainline before 2024, which returns released pins to
    # inputs; dreadpi cannot tell it from an old Raspberry Pi kernel that kept them, so it assumes the worse.
    with FakePi(model="pi5", persist=persist, keeps_outputs=False) as pi:
        result = cycle(pi, cfg, lgpio_site)
        assert result.returncode == 5
        assert "relays would drop after every cycle" in result.stderr
        assert "dtparam=strict_gpiod" in result.stderr and "dreadpi-relay-hold" in result.stderr
        assert relay_events(pi) == []
        check = pi.run([sys.executable, "-m", "dreadpi", "check-config", str(cfg)],
                       env={"PYTHONPATH": python_path("rpi-lgpio", lgpio_site)})
        assert check.returncode == 0
        assert "relays: kernel keeps released outputs: no" in check.stdout
        assert "relays: problem: nothing keeps the relays driven between cycles" in check.stdout


class HoldService:
    """`dreadpi relay-hold` running in the fake Pi, as its systemd unit would."""

    def __init__(self, pi: FakePi, cfg: Path, site: Path) -> None:
        self.pi, self.cfg, self.site = pi, cfg, site
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv, env = self.pi.command([sys.executable, "-m", "dreadpi", "relay-hold", "-c", str(self.cfg)],
                                    env={"PYTHONPATH": python_path("rpi-lgpio", self.site)})
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.log = []
        while True:  # its last line at start-up says it listens (a killed one leaves its socket file behind)
            line = self.proc.stderr.readline()
            assert line, f"the hold service exited: {self.log}"
            self.log.append(line)
            if line.startswith("relay hold service: holding"):
                return

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def test_the_hold_service_keeps_lines_where_the_kernel_would_not(lgpio_site, world_dir):
    cfg, watts = setup_pi(world_dir, "rpi-lgpio")
    with FakePi(model="pi5", persist=False) as pi:
        service = HoldService(pi, cfg, lgpio_site)
        try:
            service.start()
            assert relay_events(pi) == []  # it claims nothing until a cycle asks
            start = {pin: pi.lines()[pin].level for pin in PINS}
            for reading in SEQUENCE:
                watts.write_text(f"{reading}\n")
                result = cycle(pi, cfg, lgpio_site)
                assert result.returncode == 0, result.stderr
                state = pi.lines()
                for pin, bit in zip(PINS, PATTERNS[MODES[reading]]):
                    assert (state[pin].direction, state[pin].level) == ("out", bit), (reading, state[pin])
                    assert state[pin].consumer == "dreadpi-relay-hold"
            events = relay_events(pi)
            assert not to_input(events)
            wanted = expected_changes(SEQUENCE, False, start)
            for pin in PINS:
                assert len(level_changes(events, pin)) == wanted[pin], (pin, level_changes(events, pin))

            watts.write_text("350\n")
            assert cycle(pi, cfg, lgpio_site).returncode == 0  # drm2: relay 1 energised

            # The service dies: the kernel releases the lines (inputs: relays off, drm0), and cycles refuse.
            service.kill()
            state = pi.lines()
            assert state[17].direction == "in" and state[27].direction == "in"
            watts.write_text("550\n")
            refused = cycle(pi, cfg, lgpio_site)
            assert refused.returncode == 5 and "dreadpi-relay-hold" in refused.stderr

            # Restarted in the same boot, it re-asserts what the last cycle asked for (drm2 from 350 W: 1 0).
            service.start()
            state = pi.lines()
            assert (state[17].direction, state[17].level, state[27].level) == ("out", 1, 0)
            assert cycle(pi, cfg, lgpio_site).returncode == 0  # 550 W: drm3
            assert (pi.lines()[17].level, pi.lines()[27].level) == (0, 1)

            # After a reboot it claims nothing until a cycle asks again.
            service.kill()
            pi.reboot()
            before = len(relay_events(pi))
            service.start()
            assert len(relay_events(pi)) == before
            assert pi.lines()[17].direction == "in"
        finally:
            service.kill()


def test_the_hold_service_exits_where_it_is_not_needed(lgpio_site, world_dir):
    cfg, _ = setup_pi(world_dir, "rpi-lgpio")
    with FakePi(model="pi4", persist=True) as pi:
        result = pi.run([sys.executable, "-m", "dreadpi", "relay-hold", "-c", str(cfg)],
                        env={"PYTHONPATH": python_path("rpi-lgpio", lgpio_site)})
        assert result.returncode == 0
        assert "relay hold service not needed: this kernel keeps released outputs driven" in result.stderr


def test_register_rpi_gpio_on_a_pi_5_says_what_to_do_instead(world_dir):
    require_root()
    cfg, _ = setup_pi(world_dir, "register")
    with FakePi(model="pi5", persist=True) as pi:
        result = pi.run([sys.executable, "-m", "dreadpi", "run", "-c", str(cfg)], env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 5
        assert "RP1 chip, which python3-rpi.gpio (register access) cannot drive" in result.stderr
        assert "relays.backend = gpiochip" in result.stderr
