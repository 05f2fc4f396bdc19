"""`sudo make demo`: the appliance, end to end, on one simulated Raspberry Pi.

Brings up a simulated Pi (Debian bookworm, its own network namespace, sshd, a `pi` sudo user; the rootfs is
built once with debootstrap and cached), deploys it with playbooks/site.yml and the example inventory (vault
included), runs cycles on it, rolls out a config change with playbooks/config.yml, shows playbooks/status.yml's
table, and tears everything down. The Pi has no relay board, so it uses the sim backend.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fleet.simpi import Fleet, HarnessError, recap  # noqa: E402


def say(text: str) -> None:
    print(f"\n# {text}", flush=True)


def show_recap(output: str) -> None:
    for host, counts in recap(output).items():
        print(f"  {host}: " + " ".join(f"{k}={v}" for k, v in counts.items() if k in ("ok", "changed", "failed")))


def main() -> int:
    started = time.monotonic()
    say("bringing up a simulated Pi (the first run builds a Debian rootfs: about a minute)")
    try:
        with Fleet(1, prefix="demo-pi", host_vars={"dreadpi_relays_backend": "sim"}) as fleet:
            pi = fleet.pis[0]
            print(f"  {pi.name} at {pi.address}, reached over SSH as pi (sudo)")

            say("ansible-playbook playbooks/site.yml (example inventory and vault)")
            show_recap(fleet.ansible("site.yml").stdout)
            say("the same again: nothing to change")
            show_recap(fleet.ansible("site.yml").stdout)

            say("on the Pi: sudo dreadpi run (collector: the example's sun-curve script, as nobody)")
            print("  " + pi.ssh("sudo dreadpi run", check=False).stdout.strip())

            say("a fleet config update: a different collector command, validated on the Pi first")
            change = json.dumps({"dreadpi_script_command": "/bin/echo 560"})
            show_recap(fleet.ansible("config.yml", "-e", change).stdout)
            print("  " + pi.ssh("sudo dreadpi run", check=False).stdout.strip())

            say("a bad value is refused by the Pi, and its config stays as it was")
            bad = fleet.ansible("config.yml", "-e", "dreadpi_policy_threshold_low=900", check=False)
            refusal = [line.strip() for line in bad.stdout.splitlines() if "policy.threshold_low" in line]
            print("  " + (refusal[0] if refusal else "(refused)"))

            say("someone at home is too warm: sudo dreadpi override drm0 --for 2h")
            print("  " + pi.ssh("sudo dreadpi override drm0 --for 2h").stdout.strip())

            say("ansible-playbook playbooks/status.yml")
            table = fleet.ansible("status.yml").stdout.split("msg: |-", 1)[-1].split("PLAY RECAP")[0]
            print("\n".join("  " + line.strip() for line in table.strip().splitlines()))
            say("tearing down")
    except HarnessError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    print(f"  done in {time.monotonic() - started:.0f} s; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
