"""`sudo make bench-fleet`: how a deploy scales from one Pi to eight (simulated Pis, real SSH).

For 1 and 8 Pis: a full deploy of playbooks/site.yml, then a no-op re-run. The no-op re-run is what an
installer pays for every routine run over a fleet; for 8 Pis it should take at most 1.5x that for one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fleet.simpi import Fleet, recap  # noqa: E402

TARGET = 1.5


def measure(count: int) -> tuple:
    with Fleet(count, prefix="bench-pi", host_vars={"dreadpi_relays_backend": "sim"}) as fleet:
        started = time.monotonic()
        fleet.ansible("site.yml")
        deploy = time.monotonic() - started
        started = time.monotonic()
        result = fleet.ansible("site.yml")
        noop = time.monotonic() - started
        assert all(c["changed"] == 0 for c in recap(result.stdout).values()), "the re-run changed something"
    return deploy, noop


def main() -> int:
    results = {count: measure(count) for count in (1, 8)}
    print(f"{'Pis':>4} {'full deploy':>12} {'no-op re-run':>13}")
    for count, (deploy, noop) in results.items():
        print(f"{count:>4} {deploy:>11.1f}s {noop:>12.1f}s")
    ratio = results[8][1] / results[1][1]
    print(f"no-op re-run, 8 Pis vs 1: {ratio:.2f}x (target <= {TARGET}x: {'ok' if ratio <= TARGET else 'OVER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
