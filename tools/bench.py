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
        raise SystemExit(f"{' '.join(argv)} failed with {proc.returncode}: {proc.stderr.read().decode()}")
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


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="dreadpi-bench-"))
    directory.chmod(0o755)
    try:
        cfg = directory / "dreadpi.cfg"
        cfg.write_text(
            "[collector]\nsource = script\n[script]\ncommand = /bin/echo 550\n[policy]\nmin_dwell = 0\n"
            f"[relays]\nbackend = sim\n[paths]\nstate_dir = {directory}/state\nlog_dir = {directory}/log\n"
        )
        cfg.chmod(0o600)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # What the installed /usr/bin/dreadpi does, with the package found where Debian puts it: after the
        # standard library on sys.path (dist-packages), so stdlib imports do not search the checkout first.
        wrapper = f"import sys; sys.path.append({str(REPO)!r}); from dreadpi.cli import entry; sys.exit(entry())"
        (bare, bare_mem), (cycle, cycle_mem) = interleaved(
            [sys.executable, "-c", "pass"], [sys.executable, "-c", wrapper, "run", "-c", str(cfg)], env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ratio = cycle / bare
    print(f"interpreter       {sys.executable} ({sys.version.split()[0]}), {RUNS} runs each, medians")
    print(f"python3 -c pass   {bare * 1000:7.1f} ms   peak {bare_mem:5.1f} MiB")
    print(f"dreadpi run       {cycle * 1000:7.1f} ms   peak {cycle_mem:5.1f} MiB   (script collector, sim relays)")
    verdict = "ok" if ratio <= RATIO_TARGET else "OVER"
    print(f"ratio             {ratio:7.2f}x      target <= {RATIO_TARGET:g}x: {verdict}")
    print(f"peak memory       {cycle_mem:7.1f} MiB   target <= {MEMORY_TARGET_MIB:g} MiB: "
          f"{'ok' if cycle_mem <= MEMORY_TARGET_MIB else 'OVER'}")
    simulation_figures()
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
