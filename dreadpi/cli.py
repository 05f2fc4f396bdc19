"""The `dreadpi` command. Each subcommand returns an exit code; messages for people go to stdout/stderr."""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

from dreadpi import __version__, modes
from dreadpi.errors import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CollectorError, ConfigError, DreadpiError, UsageError
from dreadpi.override import MAX_OVERRIDE, parse_duration  # noqa: F401 (the override's limit is the command line's)

EXIT_CODES = """exit codes:
  0   done; the mode was decided from a fresh reading (run), or the command succeeded
  1   internal error (a bug: please report it with the traceback)
  2   configuration error: nothing was touched
  3   another cycle holds the lock: nothing was touched
  4   the failsafe was applied (no usable reading); the relays are in the failsafe mode
  5   the relays could not be driven
  64  wrong command-line arguments
"""

def _load(path: str):
    from dreadpi import config

    return config.load(path)


DEFAULT_CONFIG = "/etc/dreadpi/dreadpi.cfg"
APPRISE_DIR = "/usr/lib/python3/dist-packages/apprise"  # what the notification sender imports (Debian's apprise)
PAHO_DIR = "/usr/lib/python3/dist-packages/paho"  # what the MQTT child imports (Debian's python3-paho-mqtt)


def cmd_run(args: SimpleNamespace) -> int:
    from dreadpi import config as config_mod
    from dreadpi import cycle

    warnings = config_mod.check_permissions(args.config, as_root=os.geteuid() == 0)
    cfg = config_mod.load(args.config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    outcome = cycle.run(cfg)
    print(outcome.line)
    for note in outcome.notes:
        print(f"warning: {note}", file=sys.stderr)
    return outcome.exit_code


def cmd_check_config(args: SimpleNamespace) -> int:
    from dreadpi import config as config_mod

    try:
        cfg = config_mod.load(args.file)
    except ConfigError as err:
        for problem in err.problems:
            print(f"{err.path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: OK")
    from dreadpi import collectors

    for note in getattr(collectors.get(cfg.collector.source), "advice", lambda settings: [])(cfg.collector.settings):
        print(f"note: {note}")
    if cfg.notify.urls and not os.path.isdir(APPRISE_DIR):
        print("note: notify.urls is set, but Debian's apprise package is not installed here (apt install apprise); "
              "until it is, each notification is a warning in the error log instead")
    if cfg.mqtt.host and not os.path.isdir(PAHO_DIR):
        print("note: mqtt.host is set, but Debian's python3-paho-mqtt package is not installed here (apt install "
              "python3-paho-mqtt); until it is, publishing fails with a warning in the error log")
    if cfg.relays.backend != "sim":
        from dreadpi.relays import facts

        # What this machine's board and kernel mean for the relays: facts, not the file's validity (a config is
        # also checked where it is written, such as an image being baked, with no GPIO at all).
        for line in facts.sentences(facts.describe(cfg.relays, cfg.state_dir)):
            print(line)
    return EXIT_OK


def status_dict(cfg) -> dict:
    from dreadpi import pull
    from dreadpi import state as state_store
    from dreadpi.relays import facts

    saved, problem = state_store.load(cfg.state_dir, recover=False)
    now = time.time()
    override = saved.active_override(now)
    return {
        "mode": saved.mode,
        "percent": modes.PERCENT.get(saved.mode) if saved.mode else None,
        "watts": saved.watts,
        "reading_at": _iso(saved.reading_at),
        "reading_age": round(now - saved.reading_at) if saved.reading_at else None,
        "since": _iso(saved.since),
        "reason": saved.reason or (problem or "no cycle has run yet"),
        "failsafe": saved.failsafe,
        "relays": saved.relays,
        "pin_levels": saved.pin_levels,
        "override": {"mode": override.mode, "until": _iso(override.until)} if override else None,
        "source": saved.source or None,
        "extra": saved.extra,
        "updated_at": _iso(saved.updated_at),
        "version": __version__,
        "state_format": state_store.FORMAT,
        "board": facts.describe(cfg.relays, cfg.state_dir),
        "pull": pull.load(cfg.state_dir),
        "mqtt": _mqtt_status(cfg, saved) if cfg.mqtt.host else None,
        "health": {
            "failing_since": _iso(saved.failing_since),
            "consecutive_failsafe": saved.consecutive_failsafe,
            "problem": saved.problem,
            "last_good_reading_at": _iso(saved.last_good_reading_at),
            "credential_expires_at": _iso(saved.credential_expires_at),
            "switches_total": saved.switches_total,
        },
    }


def _mqtt_status(cfg, saved) -> dict:  # noqa: ANN001 (Config, state.State)
    """Who publishes to Home Assistant, and whether it works: the MQTT service's connection where it runs,
    else the last cycle's own attempt."""
    from dreadpi.reports import mqtt

    running = mqtt.service(cfg.state_dir)
    if running is None:
        return {"by": "cycle", "connected": None, "problem": saved.mqtt_problem, "since": None}
    return {"by": "service", "connected": bool(running.get("connected")), "problem": running.get("problem"),
            "since": _iso(running.get("since"))}


def _mqtt_line(info: dict) -> str:
    if info["by"] == "cycle":
        how = "each cycle publishes (no MQTT service runs)"
        return how + (f"; the last attempt failed: {info['problem']}" if info["problem"] else "")
    if info["connected"]:
        return f"the MQTT service publishes, connected since {info['since']}"
    return f"the MQTT service is not connected (since {info['since']}): {info['problem'] or 'connecting'}"


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    from dreadpi import clock

    return clock.iso(clock.local(epoch))


def cmd_status(args: SimpleNamespace) -> int:
    from dreadpi import pull

    info = status_dict(_load(args.config))
    if args.json:
        import json

        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    if info["mode"] is None:
        print(f"no mode asserted yet: {info['reason']}")
        if info["pull"]:
            print(f"pull      {pull.line(info['pull'])}")
        if info["mqtt"]:
            print(f"mqtt      {_mqtt_line(info['mqtt'])}")
        return EXIT_OK
    watts = "no reading" if info["watts"] is None else f"{info['watts']:.0f} W at {info['reading_at']}"
    print(f"mode      {info['mode']} ({info['percent']}%) since {info['since']}")
    print(f"reason    {info['reason']}")
    print(f"reading   {watts} ({info['source']})")
    print(f"relays    {' '.join(map(str, info['relays'] or []))} (1 = energised, relay 1 first)")
    if info["override"]:
        print(f"override  {info['override']['mode']} until {info['override']['until']}")
    print(f"updated   {info['updated_at']}")
    health = info["health"]
    if health["problem"]:
        print(f"health    failing since {health['failing_since']} ({health['problem']}, "
              f"{health['consecutive_failsafe']} failsafe cycles in a row)")
    else:
        print("health    ok")
    if health["credential_expires_at"]:
        print(f"credential expires {health['credential_expires_at']}")
    if info["pull"]:
        print(f"pull      {pull.line(info['pull'])}")
    if info["mqtt"]:
        print(f"mqtt      {_mqtt_line(info['mqtt'])}")
    from dreadpi.relays import facts

    for line in facts.sentences(info["board"]):
        print(line)
    return EXIT_OK


def cmd_override(args: SimpleNamespace) -> int:
    from dreadpi import override

    cfg = _load(args.config)
    outcome = override.apply(cfg, override.requested(cfg, args.mode, args.duration))
    print(outcome.line)
    return EXIT_OK


def cmd_mqtt_listen(args: SimpleNamespace) -> int:
    from dreadpi import mqtt_listen

    cfg = _load(args.config)
    return mqtt_listen.serve(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))


def cmd_enphase_auth(args: SimpleNamespace) -> int:
    """First authorisation: the user approves the app in a browser, pastes the code, and the tokens are stored
    where the cycle keeps rotating them. The exchange runs in the sandbox like any other collector call."""
    import re

    from dreadpi import collectors, cycle, lock, sandbox

    cfg = _load(args.config)
    if cfg.collector.source != "enphase":
        raise UsageError(f"enphase-auth: collector.source is {cfg.collector.source}, not enphase; set it (and the "
                         "[enphase] section) first")
    collector = collectors.get("enphase")
    print("1. Open this address, sign in with the Enlighten account of the system, and approve the application:")
    print(f"   {collector.authorize_url(cfg.collector.settings)}")
    print("2. Copy the code shown on the page that follows.")
    print("3. Paste the code here (it is read from standard input, never from the command line): ", end="",
          flush=True)
    code = sys.stdin.readline().strip()
    if not re.fullmatch(r"[A-Za-z0-9._~-]{4,512}", code):
        raise UsageError("enphase-auth: that is not an authorisation code (letters and digits, as shown by Enphase)")
    ctx = collectors.Context(settings=cfg.collector.settings, state_dir=cfg.state_dir, now=time.time(),
                             max_age=cfg.policy.max_age, timeout=cfg.collector.timeout, notes=[],
                             secrets=[str(cfg.collector.settings[k] or "") for k in collector.secret_keys])
    cycle.prepare_dirs(cfg)
    with lock.held(cfg.state_dir, wait=cfg.collector.timeout + 15):
        try:
            step = collector.exchange(ctx, code)
            who = sandbox.identity(cfg.collector.user, cfg.collector.group)
            result = sandbox.run(step.argv, step.stdin, who,
                                 sandbox.Limits(timeout=cfg.collector.timeout, memory_mb=cfg.collector.memory_limit))
            failure = sandbox.describe_exit(result)
            if failure:
                raise CollectorError(failure)
            collector.keep_authorisation(result.stdout, ctx)
        except CollectorError as err:
            raise CollectorError(collectors.redact(f"enphase-auth: {err}", ctx.secrets)) from None
    print(f"Authorised: tokens stored in {cfg.state_dir} (0600, root); the cycle refreshes them from now on.")
    return EXIT_OK


def _policy_for(args: SimpleNamespace):  # noqa: ANN202
    """The policy of -c CONFIG, or the shipped defaults when no config is named."""
    from dreadpi.policy import PolicySettings

    return _load(args.config).policy if args.config_given else PolicySettings()


def _number_option(text: str | None, name: str, default: float, minimum: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}: expected a number, got {text!r}") from None
    if not value >= minimum:
        raise UsageError(f"{name}: must be at least {minimum:g}, got {text!r}")
    return value


def _air_conditioner(args: SimpleNamespace) -> tuple:
    """(air conditioner, step) from --ac-watts, --demand and --step."""
    from dreadpi import simulate
    from dreadpi.policy import ActiveHours

    try:
        demand = ActiveHours.parse(args.demand) if args.demand else None
    except ValueError as err:
        raise UsageError(f"--demand: {err}") from None
    load = _number_option(args.ac_load, "--ac-load", 1.0, 0.01)
    if load > 1:
        raise UsageError(f"--ac-load: a share of the rated input, at most 1, got {args.ac_load!r}")
    ac = simulate.AirConditioner(_number_option(args.ac_watts, "--ac-watts", 2000.0, 1.0), demand, load)
    return ac, _number_option(args.step, "--step", simulate.DEFAULT_STEP, 10.0)


def cmd_simulate(args: SimpleNamespace) -> int:
    """Replay a trace through the policy, beside two baselines (or a sweep of one setting)."""
    from dreadpi import simulate, trace

    settings = _policy_for(args)
    ac, step = _air_conditioner(args)
    samples = trace.load(args.trace, args.timezone or "")
    try:
        if args.sweep:
            name, values = simulate.parse_sweep(args.sweep)
            runs = simulate.sweep(samples, settings, ac, name, values, step)
        else:
            runs = simulate.compare(samples, settings, ac, step)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.json:
        import json

        print(json.dumps({"ac_watts": ac.rated_watts, "step": step, "demand": str(ac.demand or "all day"),
                          "runs": {run.name: run.figures for run in runs}}, indent=2, sort_keys=True))
        return EXIT_OK
    days = runs[0].figures["days"]
    part = f" at {ac.load * 100:g} % load" if ac.load < 1 else ""
    print(f"{args.trace}: {runs[0].figures['steps']} steps of {step:g} s ({days:g} days); air conditioner "
          f"{ac.rated_watts:g} W{part}, wanting to run {ac.demand or 'all day'}")
    print(simulate.table(runs))
    return EXIT_OK


def cmd_plot(args: SimpleNamespace) -> int:
    """A PNG of one day: from a plot log as it happened, or from a trace as the policy would have done it."""
    from dreadpi import plot, simulate, trace

    if not args.output:
        raise UsageError("plot: say where to write the picture with -o FILE.png")
    settings = _policy_for(args)
    samples = trace.load(args.trace, args.timezone or "")
    if all(sample.mode is not None for sample in samples):  # a plot log: what the Pi did
        steps = [(s.epoch, s.offset, s.watts, s.mode) for s in samples]
        what = "as it happened"
    else:
        ac, step = _air_conditioner(args)
        steps = simulate.simulate(samples, settings, ac, step, keep_steps=True).steps
        what = "simulated"
    day, chosen = plot.day_of(steps, args.day)
    flow = plot.flows(samples)
    plot.draw(chosen, settings, args.output, f"dreadpi {day} ({what}): generation and air conditioner mode",
              flow, household_only=what == "simulated")
    print(f"{args.output}: {day}, {len(chosen)} points")
    return EXIT_OK


# The grammar of each command: options taking a value, flags, and positional arguments in order. It is parsed
# by hand because argparse (and the shutil it loads) costs a Pi Zero more than a whole cycle; argparse is loaded
# only to print help.
COMMANDS = {
    "run": ({"-c": "config", "--config": "config"}, {}, ()),
    "check-config": ({}, {}, ("file",)),
    "status": ({"-c": "config", "--config": "config"}, {"--json": "json"}, ()),
    "override": ({"-c": "config", "--config": "config", "--for": "duration"}, {}, ("mode",)),
    "enphase-auth": ({"-c": "config", "--config": "config"}, {}, ()),
    "relay-hold": ({"-c": "config", "--config": "config"}, {}, ()),
    "mqtt-listen": ({"-c": "config", "--config": "config"}, {}, ()),
    "simulate": ({"-c": "config", "--config": "config", "--ac-watts": "ac_watts", "--ac-load": "ac_load",
                  "--sweep": "sweep",
                  "--step": "step", "--timezone": "timezone", "--demand": "demand"}, {"--json": "json"}, ("trace",)),
    "plot": ({"-c": "config", "--config": "config", "-o": "output", "--output": "output", "--day": "day",
              "--ac-watts": "ac_watts", "--ac-load": "ac_load", "--step": "step", "--timezone": "timezone",
              "--demand": "demand"}, {},
             ("trace",)),
}
def cmd_relay_hold(args: SimpleNamespace) -> int:
    from dreadpi.relays import hold

    cfg = _load(args.config)
    return hold.serve(cfg.relays, cfg.state_dir, log=lambda line: print(line, file=sys.stderr, flush=True))


HANDLERS = {"run": cmd_run, "relay-hold": cmd_relay_hold, "check-config": cmd_check_config, "status": cmd_status,
            "override": cmd_override, "mqtt-listen": cmd_mqtt_listen,
            "enphase-auth": cmd_enphase_auth, "simulate": cmd_simulate, "plot": cmd_plot}


def parse_args(argv: list) -> SimpleNamespace:
    """The command and its arguments; UsageError names what is wrong."""
    if not argv:
        raise UsageError("no command given; see dreadpi --help")
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    options, flags, positionals = COMMANDS[command]
    values: dict = {"command": command, "config": DEFAULT_CONFIG, "json": False, "duration": None}
    values.update(dict.fromkeys(("ac_watts", "ac_load", "sweep", "step", "timezone", "demand", "output", "day")))
    given: list = []
    words = iter(rest)
    for word in words:
        name, eq, inline = word.partition("=")
        if word == "--":
            given.extend(words)
        elif name in options:
            value = inline if eq else next(words, None)
            if value is None:
                raise UsageError(f"{command}: {name} needs a value")
            values[options[name]] = value
        elif word in flags:
            values[flags[word]] = True
        elif word.startswith("-") and len(word) > 1:
            raise UsageError(f"{command}: unknown option {word!r}")
        else:
            given.append(word)
    if len(given) != len(positionals):
        wanted = " ".join(p.upper() for p in positionals) or "no arguments"
        raise UsageError(f"{command}: expected {wanted}, got {' '.join(given) or 'nothing'}")
    values.update(zip(positionals, given))
    values["config_given"] = values["config"] != DEFAULT_CONFIG
    return SimpleNamespace(**values)


def build_parser():  # noqa: ANN201 (argparse is imported here, only to print help)
    import argparse

    parser = argparse.ArgumentParser(
        prog="dreadpi",
        description="Demand Response Enabling Device (AS/NZS 4755): solar generation in, air conditioner mode out.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dreadpi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_help = f"config file (default {DEFAULT_CONFIG})"

    run = sub.add_parser("run", help="run one control cycle (cron runs this as root)")
    run.add_argument("-c", "--config", help=config_help)

    check = sub.add_parser("check-config", help="validate a config file; no root, no network, no side effects")
    check.add_argument("file")

    status = sub.add_parser("status", help="show the mode, reading and reason of the last cycle")
    status.add_argument("-c", "--config", help=config_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    override = sub.add_parser("override", help="force a mode for a while (manual over-ride), or clear it")
    override.add_argument("mode", help="drm0, drm3, drm2, drm1, or clear")
    override.add_argument("--for", dest="duration", help="how long, e.g. 2h, 90m, 1h30m (at most 7d)")
    override.add_argument("-c", "--config", help=config_help)

    auth = sub.add_parser("enphase-auth", help="authorise dreadpi with Enlighten once (source enphase); as root")
    auth.add_argument("-c", "--config", help=config_help)

    holder = sub.add_parser("relay-hold", help="the relay hold service: keeps gpiochip relay lines driven between "
                                              "cycles where the kernel would release them (systemd runs it)")
    holder.add_argument("-c", "--config", help=config_help)

    listen = sub.add_parser("mqtt-listen", help="the MQTT service (systemd runs it as root): publishes each "
                                                "cycle's state, and with mqtt.commands applies Home Assistant's "
                                                "override select; the network side is sandboxed")
    listen.add_argument("-c", "--config", help=config_help)

    sim = sub.add_parser("simulate", help="replay a generation trace through the policy, beside two baselines")
    plot = sub.add_parser("plot", help="draw one day of a plot log or a trace as a PNG (needs dreadpi[plot])")
    for each in (sim, plot):
        each.add_argument("trace", metavar="TRACE" if each is sim else "LOG_OR_TRACE",
                          help="timestamp,watts CSV (ISO 8601 or epoch), a PVOutput export, or a dreadpi plot log; "
                               ".gz allowed")
        each.add_argument("-c", "--config", help="take the [policy] from this config (default: shipped defaults)")
        each.add_argument("--ac-watts", help="rated input of the air conditioner in W (default 2000)")
        each.add_argument("--demand", help="HH:MM-HH:MM when the AC wants to run (default all day)")
        each.add_argument("--ac-load", help="share of its rated input the AC wants when it runs, 0-1 (default 1; "
                                            "an inverter unit at part load)")
        each.add_argument("--step", help="seconds between cycles (default 300)")
        each.add_argument("--timezone", help="zone of naive timestamps, e.g. Australia/Sydney (default local)")
    sim.add_argument("--json", action="store_true", help="machine-readable figures")
    sim.add_argument("--sweep", help="NAME=V1,V2,... e.g. hysteresis=0,50,100,200 or basis=generation,surplus: the "
                                     "trade-off per value (sweeping margin or ac_draw implies basis=surplus)")
    plot.add_argument("-o", "--output", help="PNG file to write")
    plot.add_argument("--day", help="YYYY-MM-DD (default: the last day in the data)")
    return parser


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        print(f"dreadpi {__version__}")
        return EXIT_OK
    if not argv:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    if "-h" in argv or "--help" in argv:
        try:
            build_parser().parse_args(argv[:1] + ["--help"] if argv[0] in COMMANDS else ["--help"])
        except SystemExit:  # argparse exits after printing help
            pass
        return EXIT_OK
    try:
        args = parse_args(argv)
        return int(HANDLERS[args.command](args))
    except ConfigError as err:
        for problem in err.problems:
            print(f"dreadpi: {err.path}: {problem}", file=sys.stderr)
        return err.exit_code
    except DreadpiError as err:
        print(f"dreadpi: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
