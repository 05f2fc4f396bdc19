"""`make demo-local`: a few real dreadpi cycles on this machine, no root, no Pi (sim relays, script collector).

Each step runs the real `dreadpi` command in a fresh process, as cron would, with a collector printing a
chosen wattage, and shows what it decided and why. Everything lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEPS = [
    ("morning, little sun", {"command": "/bin/echo 250"}),
    ("more sun", {"command": "/bin/echo 560"}),
    ("above 700 W, but not by the 50 W hysteresis", {"command": "/bin/echo 730"}),
    ("full sun", {"command": "/bin/echo 980"}),
    ("a cloud, but the mode was set moments ago (min_dwell 600 s)", {"command": "/bin/echo 650", "min_dwell": "600"}),
    ("the collector fails", {"command": "/bin/false"}),
    ("the collector hangs (timeout 2 s)", {"command": "/bin/sleep 60"}),
    ("the reading is from 2023", {"command": "/bin/echo 900 1700000000"}),
    ("sun again", {"command": "/bin/echo 300"}),
]


def write_config(directory: Path, command: str, min_dwell: str = "0") -> Path:
    path = directory / "dreadpi.cfg"
    path.write_text(
        "[collector]\nsource = script\ntimeout = 2\n"
        f"[script]\ncommand = {command}\n"
        f"[policy]\nthreshold_low = 400\nthreshold_high = 700\nhysteresis = 50\nmin_dwell = {min_dwell}\n"
        "[relays]\nbackend = sim\npins = 17 27\n"
        f"[paths]\nstate_dir = {directory}/state\nlog_dir = {directory}/log\n"
    )
    path.chmod(0o600)
    return path


def dreadpi(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dreadpi", *args], capture_output=True, text=True, env=env)


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="dreadpi-demo-"))
    directory.chmod(0o755)  # the collector runs as nobody when this demo runs as root
    try:
        print("dreadpi demo: thresholds 400/700 W, hysteresis 50 W, sim relays on GPIO17 (relay 1), GPIO27 (relay 2)")
        if os.geteuid() != 0:
            print("(not root: collectors run as you; run with sudo to see them drop to nobody)")
        print()
        for title, step in STEPS:
            cfg = write_config(directory, step["command"], step.get("min_dwell", "0"))
            result = dreadpi("run", "-c", str(cfg))
            pins = json.loads((directory / "state" / "sim-pins.json").read_text())
            print(f"# {title}: collector `{step['command']}`")
            print(f"  {result.stdout.strip()}")
            print(f"  relays 1,2 = {pins['17']},{pins['27']}   exit {result.returncode}")
        print("\n# a person at the DRED: dreadpi override drm0 --for 2h")
        print("  " + dreadpi("override", "drm0", "--for", "2h", "-c", str(cfg)).stdout.strip())
        print("\n# dreadpi status")
        print("  " + dreadpi("status", "-c", str(cfg)).stdout.strip().replace("\n", "\n  "))
        print("\n# the plot log (time, watts, mode, percent)")
        print("  " + (directory / "log" / "plot.log").read_text().strip().replace("\n", "\n  "))
        print("\n# the error log")
        print("  " + (directory / "log" / "error.log").read_text().strip().replace("\n", "\n  "))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
