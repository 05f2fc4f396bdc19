"""The per-Pi CPU accounting `make bench-fleet` relies on: a simulated Pi's whole process tree, every SSH session
included, is charged to its own cpuacct cgroup, and the cgroup goes away with the Pi. If work on the Pi escaped
the cgroup, the bench would report a run as cheaper than it is."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fleet.simpi import Fleet


def test_a_pi_is_charged_for_what_its_ssh_sessions_run(root: None) -> None:
    with Fleet(1, prefix="cg-pi", cgroups=True) as fleet:
        pi = fleet.pis[0]
        assert f"cpuacct:/dreadpi-{fleet.tag}/{pi.name}\n" in Path(f"/proc/{pi.proc.pid}/cgroup").read_text()
        before = pi.cpu_seconds()
        pi.ssh("sudo python3 -c 'sum(range(4 * 10 ** 7))'")  # about 0.8 CPU-s here, through sudo
        spent = pi.cpu_seconds() - before
        assert spent > 0.3, f"the Pi's cgroup was charged {spent:.3f} CPU-s for a CPU-bound command"
        cgroup = fleet.cgroup
    assert not pi.cgroup.exists() and not cgroup.exists(), "the cgroups outlived the fleet"
    assert not os.path.exists(f"/proc/{pi.proc.pid}")
