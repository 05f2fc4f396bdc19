"""`sudo make bench-fleet`: what a routine Ansible run costs each Pi and the controller, in pings.

Method. Fleets of 1 and 4 simulated bookworm Pis (tests/fleet/simpi.py, real SSH, sim relays), each Pi's whole
process tree (sshd, every SSH session, sudo, every module) in its own cgroup v1 cpuacct group. After one
converging site.yml run, rounds of: ping, no-op site.yml, ping, no-op config.yml, and one last ping, so every
measured run has a ping just before and just after it. Per run:
- Pi CPU-s per Pi: the sum of the Pis' cpuacct.usage deltas, divided by the number of Pis;
- controller CPU-s: getrusage(RUSAGE_CHILDREN) around the ansible-playbook (or ansible) child, which is a
  direct child we wait for, so its forked workers and ssh clients are included; plus what the SSH
  ControlPersist masters used meanwhile, since they detach from the run, outlive it and are never reaped by us;
- wall seconds; tasks executed per Pi from the PLAY RECAP (ok + failed: Ansible's ok already counts changed),
  skipped per Pi apart; and changed, which must be 0 for a no-op run (anything else aborts the bench).

Why ratios. Simulated Pis share this machine's cores with the controller and with whatever else runs here, and
absolute CPU-seconds drift about twofold with the load (caches, frequency, contention). So a cost is stated in
units of one module run, measured side by side: one ad-hoc `ansible all -m ansible.builtin.ping --become` with
the playbooks' inventory, ansible.cfg and environment. A run's Pi ratio is its Pi CPU over the mean of the two
pings around it, the median over rounds. The controller's cost per extra Pi is (no-op site.yml on 4 Pis - on
1 Pi) / 3, against a ping's controller CPU per Pi on 4 Pis (medians; these come from two fleets, so they are
not paired). Targets (issue 15): no-op site.yml <= 6 pings of Pi CPU, no-op config.yml <= 2, controller per
extra Pi <= 1.5. Playbooks run with dreadpi_rollout_batch=100%: the canary's batches (1, 20 %, the rest) add a
fixed cost per run, three passes of the play instead of one, not a cost per Pi. The bench always exits 0 once
it has measured (OVER is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fleet.simpi import Fleet, recap  # noqa: E402

FLEETS = (1, 4)
ROUNDS = 3
HOST_VARS = {"dreadpi_relays_backend": "sim"}
PING = "ping"
PI_TARGETS = {"site.yml": 6.0, "config.yml": 2.0}  # Pi CPU of a no-op run, in pings
CONTROLLER_TARGET = 1.5  # controller CPU per extra Pi, in a ping's controller CPU per Pi


@dataclass
class Run:
    """One measured run on one fleet."""

    name: str  # "ping", "site.yml", "config.yml"
    pis: int
    tasks: float  # executed per Pi (ok + failed)
    skipped: float  # per Pi
    changed: int  # over the fleet
    pi_cpu: float  # CPU-s per Pi
    controller_cpu: float  # CPU-s
    wall: float  # s


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def children_cpu() -> float:
    """User + system CPU-s of every child (and its waited-for descendants) this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ssh_masters_cpu(control_dir: Path) -> dict:
    """pid -> CPU-s of the ssh ControlPersist masters of this fleet (`ssh: CONTROL_DIR/... [mux]`): they carry
    every SSH session of a run, but detach from it, so RUSAGE_CHILDREN never sees them."""
    masters = {}
    marker = f"ssh: {control_dir}/".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(marker):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        masters[proc.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return masters


def masters_delta(before: dict, after: dict) -> float:
    """The ssh masters' CPU between two ssh_masters_cpu readings; a master that exited meanwhile (its
    ControlPersist idle timeout) loses what it used since `before`, a few milliseconds at most."""
    return sum(spent - before.get(pid, 0.0) for pid, spent in after.items())


def changed_tasks(output: str) -> list:
    """The titles of the tasks that reported changed in ansible-playbook's output, to say what a no-op run did."""
    return [block.partition("]")[0] for block in output.split("\nTASK [")[1:]
            if re.search(r"^changed: \[", block, re.MULTILINE)]


def counts(name: str, output: str, pis: int) -> tuple:
    """(tasks per Pi, skipped per Pi, changed over the fleet) of a run, from the PLAY RECAP, or for the ping one
    module run per Pi."""
    if name == PING:
        return 1.0, 0.0, output.count('changed": true') + output.count("changed: true")
    hosts = recap(output)
    if len(hosts) != pis:
        raise SystemExit(f"{name}: the PLAY RECAP lists {len(hosts)} hosts, not {pis}:\n{output}")
    total = {key: sum(host.get(key, 0) for host in hosts.values()) for key in ("ok", "failed", "skipped", "changed")}
    return (total["ok"] + total["failed"]) / pis, total["skipped"] / pis, total["changed"]


def measure(fleet: Fleet, name: str, noop: bool = True) -> Run:
    """Run `name` (a playbook, or the ping) once on the whole fleet and account for it."""
    pis_before = sum(pi.cpu_seconds() for pi in fleet.pis)
    control_dir = fleet.workdir / "cp"
    children_before, masters_before = children_cpu(), ssh_masters_cpu(control_dir)
    started = time.monotonic()
    result = (fleet.adhoc("ansible.builtin.ping", "--become") if name == PING
              else fleet.ansible(name, "-e", "dreadpi_rollout_batch=100%"))
    wall = time.monotonic() - started
    masters = masters_delta(masters_before, ssh_masters_cpu(control_dir))
    controller = children_cpu() - children_before + masters
    pi_cpu = (sum(pi.cpu_seconds() for pi in fleet.pis) - pis_before) / fleet.count
    tasks, skipped, changed = counts(name, result.stdout, fleet.count)
    if noop and changed:
        raise SystemExit(f"{name} on {fleet.count} Pi(s) should have been a no-op but changed {changed}: "
                         f"{', '.join(changed_tasks(result.stdout)) or '?'}\n{result.stdout}")
    run = Run(name, fleet.count, tasks, skipped, changed, pi_cpu, controller, wall)
    log(f"  {name:<10} {run.tasks:4.0f} tasks/Pi  Pi {run.pi_cpu:6.2f} CPU-s/Pi  controller {run.controller_cpu:6.2f}"
        f" CPU-s (ssh masters {masters:.2f})  {run.wall:6.1f} s")
    return run


def bench(count: int, rounds: int) -> tuple:
    """(the converging run, the interleaved sequence of runs) on a fresh fleet of `count` Pis."""
    log(f"{count} Pi(s): starting the fleet")
    with Fleet(count, prefix="bench-pi", host_vars=HOST_VARS, cgroups=True) as fleet:
        log(f"{count} Pi(s): converging site.yml")
        converge = measure(fleet, "site.yml", noop=False)
        sequence = []
        for round_ in range(rounds):
            log(f"{count} Pi(s): round {round_ + 1}/{rounds}")
            for name in (PING, "site.yml", PING, "config.yml"):
                sequence.append(measure(fleet, name))
        sequence.append(measure(fleet, PING))
    return converge, sequence


def pi_ratios(sequence: list, name: str) -> list:
    """Each `name` run's Pi CPU over the mean of the pings just before and after it."""
    return [run.pi_cpu / ((sequence[i - 1].pi_cpu + sequence[i + 1].pi_cpu) / 2)
            for i, run in enumerate(sequence) if run.name == name]


def median_run(runs: list) -> Run:
    """A run whose every figure is the median of `runs`' (same name and fleet)."""
    first = runs[0]
    return Run(first.name, first.pis, *(statistics.median(getattr(run, field) for run in runs)
                                        for field in ("tasks", "skipped", "changed", "pi_cpu", "controller_cpu",
                                                      "wall")))


def summarise(results: dict) -> dict:
    """Rows of the table and the verdicts, from {pis: (converge, sequence)}."""
    rows = []
    medians = {}
    for count, (converge, sequence) in results.items():
        rows.append({**asdict(converge), "name": "site.yml converge", "ratio": None, "target": None})
        for name in (PING, "site.yml", "config.yml"):
            median = medians[name, count] = median_run([run for run in sequence if run.name == name])
            ratio = 1.0 if name == PING else statistics.median(pi_ratios(sequence, name))
            target = PI_TARGETS.get(name)
            rows.append({**asdict(median), "name": name if name == PING else f"{name} no-op", "ratio": ratio,
                         "target": target})
    low, high = min(results), max(results)
    per_extra = (medians["site.yml", high].controller_cpu - medians["site.yml", low].controller_cpu) / (high - low)
    ping_per_pi = medians[PING, high].controller_cpu / high
    controller = {"name": f"controller per extra Pi (site.yml no-op, {low} -> {high} Pis)",
                  "controller_cpu": per_extra, "ping_controller_cpu_per_pi": ping_per_pi,
                  "ratio": per_extra / ping_per_pi, "target": CONTROLLER_TARGET}
    return {"rows": rows, "controller": controller}


def verdict(ratio: float | None, target: float | None) -> str:
    if target is None:
        return ""
    return "ok" if ratio <= target else "OVER"


def context() -> dict:
    """What the figures were measured on: the machine, its load, the role's commit."""
    head = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()
    return {"cores": os.cpu_count(), "load": [round(v, 2) for v in os.getloadavg()], "commit": head or "?"}


def table(summary: dict, before: dict, after: dict, runtime: float) -> str:
    lines = [f"{'run':<26} {'Pis':>3} {'tasks/Pi':>8} {'skip/Pi':>7} {'Pi CPU-s/Pi':>11} {'ctrl CPU-s':>10} "
             f"{'wall s':>7} {'vs ping':>8} {'target':>7}"]
    for row in summary["rows"]:
        ratio = "unit" if row["name"] == PING else ("" if row["ratio"] is None else f"{row['ratio']:.1f}")
        target = "" if row["target"] is None else f"<= {row['target']:g}"
        lines.append(f"{row['name']:<26} {row['pis']:>3} {row['tasks']:>8g} {row['skipped']:>7g} "
                     f"{row['pi_cpu']:>11.2f} {row['controller_cpu']:>10.2f} {row['wall']:>7.1f} {ratio:>8} "
                     f"{target:>7}  {verdict(row['ratio'], row['target'])}")
    ctrl = summary["controller"]
    lines.append(f"{ctrl['name']}: {ctrl['controller_cpu']:.2f} CPU-s = {ctrl['ratio']:.1f} x a ping's controller "
                 f"CPU per Pi on {summary['rows'][-1]['pis']} Pis ({ctrl['ping_controller_cpu_per_pi']:.2f} CPU-s)")
    lines.append(f"{'':<26} target <= {ctrl['target']:g} x  {verdict(ctrl['ratio'], ctrl['target'])}")
    lines.append("Medians over rounds; 'vs ping': the median of each run's Pi CPU over the mean of the pings around"
                 " it.")
    lines.append(f"{before['cores']} cores; load average {before['load']} before, {after['load']} after; "
                 f"commit {before['commit']}; bench {runtime:.0f} s.")
    return "\n".join(lines)


def rounded(value: object) -> object:
    """`value` with every float to 3 decimals, for a JSON line people read too."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds per fleet ({ROUNDS})")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON line on stdout (the table goes to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench-fleet needs root (simulated Pis: namespaces, mounts, cgroups): run it with sudo")
    started, before = time.monotonic(), context()
    results = {count: bench(count, args.rounds) for count in FLEETS}
    summary = summarise(results)
    after, runtime = context(), time.monotonic() - started
    text = table(summary, before, after, runtime)
    if args.json:
        log(text)
        print(json.dumps(rounded({**summary, "rounds": args.rounds, "context": {**before, "load_after": after["load"]},
                          "runtime": runtime}), separators=(",", ":")))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
