"""Debian packages the tests install on the test machine (root): apt-get install, with no service left running
or starting at boot. A package's unit is masked first (a mask deb-systemd-helper never lifts, because it did not
make it), and a temporary policy-rc.d refuses every start while apt runs (that also covers hosts without systemd,
where a package's init script would start its server). `systemctl unmask UNIT` undoes a mask if you want it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DENY_STARTS = "#!/bin/sh\n# dreadpi tests: no service starts while a test installs its packages\nexit 101\n"
UNITS = Path("/etc/systemd/system")


class InstallError(RuntimeError):
    pass


def install(packages: list, units: tuple = ()) -> None:
    """apt-get install `packages` without recommends; `units` (e.g. "mosquitto.service") never start."""
    for unit in units:
        mask = UNITS / unit
        if not mask.exists() and not mask.is_symlink():
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.symlink_to("/dev/null")
    temporary_policy = not POLICY_RC_D.exists()
    if temporary_policy:
        POLICY_RC_D.write_text(DENY_STARTS)
        POLICY_RC_D.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise InstallError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")
    finally:
        if temporary_policy:
            POLICY_RC_D.unlink()
