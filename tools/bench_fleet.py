"""`sudo make bench-fleet`: how a deploy scales from one Pi to eight (simulated Pis, real SSH).

For 1 and 8 Pis: a full deploy of playbooks/site.yml, then a no-op re-run. The no-op re-run is what an
installer pays for every routine run over a fleet; for 8 Pis it should take at most 1.5x that for one.
Simulated Pis run on this machine's own cores, next to the controller, so the CPU seconds the whole machine
spent are shown too: when they approach (cores x seconds), the figure measures this machine, not the fleet.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fleet.simpi import Fleet, recap  # noqa: E402

TARGET = 1.5


def busy_seconds() -> float:
    """CPU seconds this whole machine has spent busy since boot (all cores, from /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(fleet: Fleet) -> tuple:
    started, cpu = time.monotonic(), busy_seconds()
    result = fleet.ansible("site.yml")
    return time.monotonic() - started, busy_seconds() - cpu, result


def measure(count: int) -> tuple:
    with Fleet(count, prefix="bench-pi", host_vars={"dreadpi_relays_backend": "sim"}) as fleet:
        deploy, deploy_cpu, _ = timed(fleet)
        noop, noop_cpu, result = timed(fleet)
        assert all(c["changed"] == 0 for c in recap(result.stdout).values()), "the re-run changed something"
    return deploy, deploy_cpu, noop, noop_cpu


def main() -> int:
    results = {count: measure(count) for count in (1, 8)}
    print(f"{'Pis':>4} {'full deploy':>12} {'(CPU s)':>8} {'no-op re-run':>13} {'(CPU s)':>8}   {os.cpu_count()} cores")
    for count, (deploy, deploy_cpu, noop, noop_cpu) in results.items():
        print(f"{count:>4} {deploy:>11.1f}s {deploy_cpu:>8.1f} {noop:>12.1f}s {noop_cpu:>8.1f}")
    ratio = results[8][2] / results[1][2]
    print(f"no-op re-run, 8 Pis vs 1: {ratio:.2f}x (target <= {TARGET}x: {'ok' if ratio <= TARGET else 'OVER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
