"""`make bench`: what one control cycle costs, measured against starting the same interpreter to do nothing.

A cycle runs on a Pi Zero every few minutes, so what matters is its start-up cost relative to Python's own and
its peak memory. Each figure is the median of repeated runs of the real command in a fresh process (script
collector printing a fixed reading, sim relays), the way cron runs it. Targets: <= 3x and <= 30 MiB.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "40"))
RATIO_TARGET = 3.0
MEMORY_TARGET_MIB = 30.0


def measure(argv: list, env: dict) -> tuple:
    """(seconds, peak RSS in MiB) of one run, including any processes it waited for."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed with {proc.returncode}: {proc.stderr.read().decode()}")
    proc.stderr.close()
    return elapsed, usage.ru_maxrss / 1024


def interleaved(first: list, second: list, env: dict) -> tuple:
    """Medians and peaks of both commands, run alternately so that machine noise hits both alike."""
    measure(first, env)  # warm the page cache and write the bytecode caches
    measure(second, env)
    a, b = [], []
    for _ in range(RUNS):
        a.append(measure(first, env))
        b.append(measure(second, env))
    return ((statistics.median(t for t, _ in a), max(m for _, m in a)),
            (statistics.median(t for t, _ in b), max(m for _, m in b)))


PI_PYTHON = ["/usr/bin/python3", "-I"] if os.path.exists("/usr/bin/python3") else [sys.executable, "-I"]


def cycle_argv(python: list, cfg: Path, *extra_paths: str) -> list:
    """What the installed command does: the program found after the standard library on sys.path (where Debian
    puts packages), so stdlib imports do not search the checkout first."""
    paths = "".join(f"; sys.path.append({path!r})" for path in (str(REPO), *extra_paths))
    return [*python, "-c", f"import sys{paths}; from dreadpi.cli import entry; sys.exit(entry())", "run", "-c",
            str(cfg)]


def write_config(directory: Path, backend: str, label: str = "", extra: str = "") -> Path:
    name = f"{backend}-{label}" if label else backend
    cfg = directory / f"dreadpi-{name}.cfg"
    cfg.write_text(
        "[collector]\nsource = script\n[script]\ncommand = /bin/echo 550\n[policy]\nmin_dwell = 0\n"
        f"[relays]\nbackend = {backend}\n[paths]\nstate_dir = {directory}/state-{name}\n"
        f"log_dir = {directory}/log-{name}\n" + extra
    )
    cfg.chmod(0o600)
    return cfg


def reports_figures(directory: Path, env: dict) -> None:
    """The same cycle with the metrics file and notifications configured: a steady cycle has nothing to tell,
    so it must start no sender. The notify URL is a closed loopback port: an attempt would log a warning."""
    extra = (f"[metrics]\ntextfile_dir = {directory}/prom\nschedule = */5 * * * *\n"
             "[notify]\nurls = json://127.0.0.1:9/dreadpi\n")
    cfg = write_config(directory, "sim", "reports", extra)
    bare, cycle = interleaved([*PI_PYTHON, "-c", "pass"], cycle_argv(PI_PYTHON, cfg), env)
    report("script collector, sim relays, metrics and notify, no transition", PI_PYTHON, bare, cycle)
    log = directory / "log-sim-reports" / "error.log"
    if log.exists() and "notification" in log.read_text():
        raise SystemExit(f"a steady cycle tried to notify: {log.read_text()}")
    print("  no notification attempted (error.log has no notify warning)")


MOSQUITTO = "/usr/sbin/mosquitto"


def mqtt_figures(directory: Path, env: dict) -> None:
    """The same cycle with `[mqtt]` configured, both ways it publishes. With the MQTT service running (`dreadpi
    mqtt-listen`, which the role installs wherever MQTT is on) the cycle only signals it, and the service
    publishes the state on its open connection: the figure is the cycle, and the service's own CPU time per
    cycle (root side and sandboxed child, from /proc) is printed beside it. Without the service (a Pi set up
    without the role), the cycle waits for a sandboxed publisher of its own (Debian's python3 -I with
    python3-paho-mqtt), which connects and publishes 8 retained messages. With Debian's mosquitto installed
    (tests/mosquitto.py installs it without starting the service) a broker runs on loopback for the bench;
    without one, the publisher meets a closed port, which still costs the child's start and paho's import, and
    is said so; the service needs the broker, so its figure is left out."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = None
    if os.path.exists(MOSQUITTO) and os.geteuid() == 0:
        conf = directory / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        conf.chmod(0o644)
        broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    extra = f"[mqtt]\nhost = 127.0.0.1\nport = {port}\ntls = no\ntopic_prefix = dreadpi/bench\n"
    cfg = write_config(directory, "sim", "mqtt", extra)
    try:
        if broker:
            service_figures(cfg, directory / "state-sim-mqtt", env)
        bare, cycle = interleaved([*PI_PYTHON, "-c", "pass"], cycle_argv(PI_PYTHON, cfg), env)
    finally:
        if broker:
            broker.kill()
            broker.wait()
    where = "a mosquitto on loopback" if broker else "no broker (a closed port: install mosquitto, run as root)"
    report(f"script collector, sim relays, mqtt, no service: a publisher per cycle to {where}", PI_PYTHON, bare,
           cycle)
    log = directory / "log-sim-mqtt" / "error.log"
    if broker and log.exists() and "mqtt" in log.read_text():
        raise SystemExit(f"publishing failed: {log.read_text()}")


def service_figures(cfg: Path, state_dir: Path, env: dict) -> None:
    """The cycle with the MQTT service running, and the service's CPU time per cycle."""
    argv = [*PI_PYTHON, "-c", f"import sys; sys.path.append({str(REPO)!r}); from dreadpi.cli import entry; "
                              f"sys.exit(entry())", "mqtt-listen", "-c", str(cfg)]
    service = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (state_dir / "mqtt-service.json").exists() or len(tree(service.pid)) < 2:
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit(f"the MQTT service did not start: {service.stderr.read().decode()}")
            time.sleep(0.1)
        time.sleep(1.0)  # connected
        before = cpu_seconds(service.pid)
        bare, cycle = interleaved([*PI_PYTHON, "-c", "pass"], cycle_argv(PI_PYTHON, cfg), env)
        time.sleep(1.0)  # the last publish
        per_cycle = (cpu_seconds(service.pid) - before) / (RUNS + 1)
    finally:
        service.terminate()
        service.wait(10)
    report("script collector, sim relays, mqtt through the MQTT service on a mosquitto on loopback", PI_PYTHON,
           bare, cycle)
    print(f"  the service's CPU per cycle (root side and child): {per_cycle * 1000:.1f} ms = "
          f"{per_cycle / bare[0]:.2f}x the bare interpreter's start; cycle and service together "
          f"{(cycle[0] + per_cycle) / bare[0]:.2f}x")


def tree(pid: int) -> list:
    """pid and its children (the service's sandboxed child is its direct child, in a session of its own)."""
    found = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process and its children, live."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])
    return total / ticks


def report(label: str, python: list, bare: tuple, cycle: tuple) -> None:
    (bare_s, bare_mem), (cycle_s, cycle_mem) = bare, cycle
    ratio = cycle_s / bare_s
    print(f"{' '.join(python)} -c pass   {bare_s * 1000:7.1f} ms   peak {bare_mem:5.1f} MiB")
    print(f"dreadpi run ({label})   {cycle_s * 1000:7.1f} ms   peak {cycle_mem:5.1f} MiB")
    print(f"  ratio {ratio:.2f}x (target <= {RATIO_TARGET:g}x: {'ok' if ratio <= RATIO_TARGET else 'OVER'}), "
          f"peak {cycle_mem:.1f} MiB (target <= {MEMORY_TARGET_MIB:g} MiB: "
          f"{'ok' if cycle_mem <= MEMORY_TARGET_MIB else 'OVER'})")


def main() -> int:
    if sys.argv[1:2] == ["--inner"]:  # on the emulated Pi: measure there, print the two figures as JSON
        import json

        bare, cycle = interleaved([*PI_PYTHON, "-c", "pass"], json.loads(sys.argv[2]), dict(os.environ))
        print(json.dumps([bare, cycle]))
        return 0
    directory = Path(tempfile.mkdtemp(prefix="dreadpi-bench-"))
    directory.chmod(0o755)
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        print(f"interpreter: {' '.join(PI_PYTHON)} ({subprocess.check_output([PI_PYTHON[0], '-V'], text=True).strip()})"
              f", {RUNS} runs each, medians, interleaved")
        bare, cycle = interleaved([*PI_PYTHON, "-c", "pass"], cycle_argv(PI_PYTHON, write_config(directory, "sim")),
                                  env)
        report("script collector, sim relays", PI_PYTHON, bare, cycle)
        reports_figures(directory, env)
        mqtt_figures(directory, env)
        lgpio_figures(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    simulation_figures()
    surplus_figures()
    return 0


def lgpio_figures(directory: Path) -> None:
    """The rpi-gpio backend through the real rpi-lgpio and lgpio on an emulated Pi 4 (tests/gpiochip: the
    kernel's gpiochip answered by an LD_PRELOAD shim, which the bare interpreter also loads)."""
    import json

    if os.geteuid() != 0:
        print("dreadpi run (rpi-lgpio): skipped, the emulated Pi needs root (sudo make bench)")
        return
    sys.path.insert(0, str(REPO))
    from tests.gpiochip import FakePi, ensure_libraries

    site = ensure_libraries()
    cfg = write_config(directory, "rpi-gpio")
    with FakePi(model="pi4", persist=True) as pi:
        result = pi.run([*PI_PYTHON, str(Path(__file__).resolve()), "--inner",
                         json.dumps(cycle_argv(PI_PYTHON, cfg, str(site)))], env={"BENCH_RUNS": str(RUNS)},
                        timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"the rpi-lgpio benchmark failed: {result.stderr}")
        bare, cycle = json.loads(result.stdout)
        lines = pi.lines()
    if (lines[17].direction, lines[27].direction, lines[27].level) != ("out", "out", 1):
        raise SystemExit("the rpi-lgpio benchmark did not drive drm3")
    report("script collector, rpi-gpio through rpi-lgpio, emulated Pi 4", PI_PYTHON, tuple(bare), tuple(cycle))


SIM_TARGET = 2.0  # seconds for a year of 5-minute steps through the policy


def simulation_figures() -> None:
    """A year of 5-minute steps (105,120) through the policy, and the README's table of policy vs original."""
    sys.path.insert(0, str(REPO))
    from dreadpi import simulate, trace
    from dreadpi.policy import PolicySettings

    ac = simulate.AirConditioner(2000.0)
    for size in ("3", "5", "8"):
        samples = trace.load(str(REPO / "data" / "traces" / f"greensboro-{size}kw-5min.csv.gz"))
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            ours = simulate.simulate(samples, PolicySettings(), ac)
            timings.append(time.perf_counter() - started)
        original = simulate.simulate(samples, PolicySettings()._replace(**simulate.ORIGINAL), ac)
        best = min(timings)
        o, p = ours.figures, original.figures
        verdict = "ok" if best < SIM_TARGET else "OVER"
        print(f"simulate {size} kW    {best:7.2f} s for {o['steps']} steps, target < {SIM_TARGET:g} s: {verdict}; "
              f"switches/day {o['switches_per_day']:.2f} vs original {p['switches_per_day']:.2f}, "
              f"solar share {o['solar_share'] * 100:.2f} % vs {p['solar_share'] * 100:.2f} %")


MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def surplus_figures() -> None:
    """The surplus basis on the benchmark year with a household (tools/make_load.py), a 2.5 kW AC wanting to run
    all day: a year's simulation timed with the trace read, the claim against the generation basis, the margin
    sweep along the frontier, and the floor (the README's tables)."""
    sys.path.insert(0, str(REPO))
    from dreadpi import simulate, trace
    from dreadpi.policy import PolicySettings

    ac = simulate.AirConditioner(2500.0)
    base = PolicySettings(ac_watts=2500.0)
    for size in ("5", "8"):
        path = str(REPO / "data" / "traces" / f"greensboro-{size}kw-house-5min.csv.gz")
        timings = []
        for _ in range(3):
            started = time.process_time()
            samples = trace.load(path)
            simulate.simulate(samples, base._replace(basis="surplus"), ac)
            timings.append(time.process_time() - started)
        best = min(timings)
        print(f"simulate {size} kW surplus, trace read included: {best:.2f} CPU-s, target < {SIM_TARGET:g} s: "
              f"{'ok' if best < SIM_TARGET else 'OVER'}")
        front = simulate.floor(samples, base, ac)
        runs = simulate.compare(samples, base, ac)
        generation = runs[0]
        print(f"  {'policy':<18} {'daylight AC kWh':>15} {'import/AC kWh':>13} {'floor there':>11} "
              f"{'cut':>6} {'best cut':>8} {'gap':>6} {'AC energy':>9} {'sw/day':>7}")
        sweep = simulate.sweep(samples, base._replace(basis="surplus"), ac, "margin", list(MARGINS))
        for run in [*runs, *sweep]:
            f = run.figures
            claim = simulate.claim(generation, run)
            print(f"  {run.name:<18} {f['daylight_ac_kwh']:>15.0f} {f['daylight_import_per_kwh'] * 100:>12.1f}% "
                  f"{f['daylight_floor_per_kwh'] * 100:>10.1f}% {claim['cut'] * 100:>5.1f}% "
                  f"{claim['best_cut'] * 100:>7.1f}% {claim['gap'] * 100:>5.1f} {claim['energy_share'] * 100:>8.1f}% "
                  f"{f['switches_per_day']:>7.2f}")
        points = ", ".join(f"{energy:.0f}: {imported / energy * 100:.1f}%" for energy, imported in front.points(7))
        print(f"  floor (daylight AC kWh: import per AC kWh): {points}")


if __name__ == "__main__":
    sys.exit(main())
