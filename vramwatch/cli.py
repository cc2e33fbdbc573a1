"""argv -> command; maps errors to exit codes.

Exit codes (stable, listed in vramwatch(8)):
  0   success (check: the config is valid)
  1   runtime failure (status could not sample)
  2   usage error (bad command line)
  78  configuration error (EX_CONFIG; the unit sets RestartPreventExitStatus=78)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vramwatch import __version__
from vramwatch.config import (
    Config,
    ConfigError,
    budget_fit_warnings,
    default_path,
    floor_warnings,
    gpu_pin_problems,
    load,
    reserve_fit_errors,
)
from vramwatch.events import FORMATS, TARGETS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

DESCRIPTION = """\
Guard a shared NVIDIA GPU host: when free VRAM or available RAM stays under a
floor, restart the tenant unit that is most over its budget, through systemd,
and log why in the journal.
"""

EPILOG = """\
commands:
  run      the daemon, in the foreground (systemd Type=notify; SIGHUP reloads)
  check    validate the config and compare budgets with the GPUs present
  status   one look at GPUs, host RAM, tenants and who holds the memory
  replay   run the policy over a recorded trace (run --record), or compare configs
  polkit-rule
           print the polkit rule that lets user vramwatch act on the tenants

examples:
  vramwatch check                      validate /etc/vramwatch.toml
  vramwatch run --dry-run              observe first: log "would restart", never act
  vramwatch status --json | jq .       machine-readable view
  journalctl -u vramwatch VRAMWATCH_EVENT=restart

exit status: 0 ok, 1 failure, 2 usage error, 78 invalid configuration.
See vramwatch(8) and vramwatch.toml(5).
"""


def _config_option(default: object) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="config file (default: $VRAMWATCH_CONFIG or /etc/vramwatch.toml)",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vramwatch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_config_option(None)],
    )
    # A subcommand's default would overwrite a -c given before the command
    # (`vramwatch -c FILE check`): the subcommands set config only when given.
    common = _config_option(argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"vramwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon in the foreground",
        description="Sample every interval, decide, act, log. SIGHUP reloads the config "
        "(an invalid one is rejected and the running one kept); SIGTERM exits 0.",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and log 'would_restart', never act (overrides [daemon] dry_run)",
    )
    run.add_argument(
        "--log-target",
        choices=TARGETS,
        default="auto",
        help="journal: native journald fields; stderr: lines on stderr; "
        "auto (default): journal when started by systemd, else stderr",
    )
    run.add_argument(
        "--log-format",
        choices=FORMATS,
        default="auto",
        help="for stderr: console (readable) or json (one object per line); "
        "auto: console on a terminal, json otherwise",
    )
    run.add_argument("--debug", action="store_true", help="also log debug events")
    run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the restart history is kept across restarts (default: $STATE_DIRECTORY, "
        "set by systemd's StateDirectory=, or /var/lib/vramwatch)",
    )
    run.add_argument(
        "--record",
        default=None,
        metavar="FILE",
        help="record every sample to this trace (gzip JSON lines, rotated) for "
        "`vramwatch replay`; overrides [daemon] record",
    )
    _replay_parser(sub)
    sub.add_parser(
        "check",
        parents=[common],
        help="validate the config",
        description="Validate the config as run would (including who may write it and "
        "every directory above it); exit 0 when valid, 78 with the file, key and problem "
        "otherwise. Warns when the VRAM budgets cannot fit the GPUs present.",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="show GPUs, host RAM and tenants vs their floors and budgets",
        description="One look at the host: each GPU vs its floor, host RAM vs its floor, "
        "each tenant's VRAM and RAM vs budget and unit state, and GPU processes that "
        "belong to no tenant.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    polkit_rule = sub.add_parser(
        "polkit-rule",
        parents=[common],
        help="print the polkit rule for running as an unprivileged user",
        description="Print a polkit JavaScript rule (ES5, polkit >= 0.106) that lets USER "
        "restart or stop exactly the configured, unprotected tenants, each with the verb of "
        "its action, through org.freedesktop.systemd1.manage-units. Install it as "
        "/etc/polkit-1/rules.d/50-vramwatch.rules and regenerate it when tenants change.",
    )
    polkit_rule.add_argument(
        "--user",
        default="vramwatch",
        metavar="USER",
        help="the user vramwatch runs as (default: vramwatch)",
    )
    return parser


def _replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="run the policy over a recorded trace, with its config or another",
        description="Run the real policy and trend estimator over a trace written by "
        "`run --record` and print every decision in the journal's words, with the "
        "trace's times, then a summary. Nothing is acted on. With -c FILE the trace is "
        "replayed with that config (an action the daemon did not take is taken as done); "
        "-c A -c B compares two configs side by side.",
    )
    replay.add_argument("trace", metavar="FILE", help="the trace (its rotated segments too)")
    replay.add_argument(
        "-c",
        "--config",
        dest="replay_configs",
        action="append",
        type=Path,
        metavar="FILE",
        help="replay with this config instead of the recorded one; twice to compare",
    )
    replay.add_argument("--from", dest="start", metavar="TIME", help="ISO time to start at")
    replay.add_argument("--to", dest="end", metavar="TIME", help="ISO time to stop at")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.add_argument(
        "--plot", metavar="OUT", help="draw the trace to OUT.png or OUT.svg (the plot extra)"
    )


def _load(args: argparse.Namespace, *, trusted: bool = False) -> tuple[Path, Config]:
    path: Path = args.config or default_path()
    return path, load(path, trusted=trusted)


def _replay_args(args: argparse.Namespace) -> argparse.Namespace:
    """`vramwatch -c X replay T` is `vramwatch replay T -c X`: replay's own -c is
    repeatable, so a -c before the command is its first config."""
    if args.command == "replay" and args.config is not None:
        args.replay_configs = [args.config, *(args.replay_configs or [])]
        args.config = None
    return args


def _untrusted(path: Path) -> str | None:
    """Why run would refuse the config at ``path`` as untrusted, or None."""
    import os

    from vramwatch.security import Untrusted, open_config

    try:
        os.close(open_config(path))
    except Untrusted as exc:
        return str(exc)
    except OSError:
        return None  # not a trust question; the load just read it
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = _replay_args(parser.parse_args(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "polkit-rule":
            return cmd_polkit_rule(args)
        if args.command == "replay":
            return cmd_replay(args)
        return cmd_run(args)
    except ConfigError as exc:
        print(f"vramwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE


def cmd_check(args: argparse.Namespace) -> int:
    # The same trust rules as run: "valid" must mean that run will take it.
    path, config = _load(args, trusted=True)
    from vramwatch.sources.nvml import NvmlSource
    from vramwatch.sources.worker import DeadlineGpuSource

    source = DeadlineGpuSource(NvmlSource())  # a hung driver must not hang `check` too
    reading = source.sample(time.monotonic_ns(), config.nvml_timeout_ns)
    source.close()
    gpus, nvml_error = reading.gpus, reading.nvml_error
    if reading.hung_ns is not None:
        nvml_error = f"NVML did not answer within nvml_timeout ({reading.hung_ns / 1e9:g}s)"
    totals = [g.total_bytes for g in gpus if g.total_bytes is not None]
    present = [g for g in gpus if g.total_bytes is not None]
    problems = reserve_fit_errors(config, present)
    problems += gpu_pin_problems(config, [(g.index, g.uuid, g.parent_uuid) for g in gpus])
    for problem in problems:
        print(f"vramwatch: {path}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    warnings = floor_warnings(config, [g.total_bytes for g in gpus], _mem_total())
    print(
        f"{path}: valid: {len(config.tenants)} tenant{'' if len(config.tenants) == 1 else 's'}, "
        f"bus {config.daemon.bus}" + (", dry run" if config.daemon.dry_run else "")
    )
    if nvml_error:
        print(f"vramwatch: note: {nvml_error}", file=sys.stderr)
    for warning in warnings + budget_fit_warnings(config, totals):
        print(f"vramwatch: warning: {warning}", file=sys.stderr)
    if config.has_containers:
        from vramwatch.sources.containers import Engine, check_warnings

        engine = Engine(config.containers.socket)
        keys = [t.unit for t in config.tenants if t.id.is_container]
        for warning in check_warnings(keys, engine):
            print(f"vramwatch: warning: {warning}", file=sys.stderr)
        engine.close()
    if config.tenants:
        _report_protections(config)
    return EXIT_OK


def _mem_total() -> int | None:
    """MemTotal of this host, or None when /proc/meminfo cannot be read."""
    from vramwatch.sources.procfs import ProcFs

    try:
        return ProcFs().host().mem_total_bytes
    except Exception:  # noqa: BLE001 - a warning's input; check must not fail on it
        return None


def _report_protections(config: Config) -> None:
    """Advise on tenants whose units lack kernel limits; an unreachable bus is only a note."""
    from vramwatch.actuators.systemd import SystemdClient
    from vramwatch.protections import advice, read_states

    client = SystemdClient(config.daemon.bus)
    try:
        states, problem = read_states(config, client)
    finally:
        client.close()
    if problem:
        print(
            f"vramwatch: note: kernel protections not checked: {problem}",
            file=sys.stderr,
        )
        return
    for line in advice(config, states):
        print(f"vramwatch: advice: {line}", file=sys.stderr)


def cmd_polkit_rule(args: argparse.Namespace) -> int:
    from vramwatch.polkit import grants, rule

    # The rule grants vramwatch's user what this file names: the same trust as run.
    _path, config = _load(args, trusted=True)
    if not grants(config):
        print(
            "vramwatch: warning: no unprotected tenant: the rule grants nothing",
            file=sys.stderr,
        )
    sys.stdout.write(rule(config, user=args.user))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from vramwatch.actuators import Router
    from vramwatch.actuators.containers import ContainerActuator
    from vramwatch.actuators.systemd import SystemdClient, notify, watchdog_interval_ns
    from vramwatch.daemon import Daemon, Ports
    from vramwatch.events import EventLog
    from vramwatch.record.recorder import RecordingDaemon
    from vramwatch.sampler import Sampler, raise_open_files_limit
    from vramwatch.sink import MetricsSink, NoMetrics, enabled
    from vramwatch.sources.nvml import NvmlSource
    from vramwatch.sources.procfs import ProcFs
    from vramwatch.sources.worker import KeepAlive
    from vramwatch.state import StateStore, default_dir

    # The config decides which services get restarted: run only trusts a file
    # that nobody but root (or vramwatch's own user) can change.
    path, config = _load(args, trusted=True)
    events = EventLog(args.log_target, args.log_format, min_level="debug" if args.debug else "info")
    # [metrics] is read at start only (listen and textfile take effect on restart):
    # with both off, prometheus_client is never imported.
    metrics: MetricsSink = NoMetrics()
    if enabled(config.metrics):
        from vramwatch.metrics import Metrics, start_exporter

        metrics = exporter = Metrics(textfile=config.metrics.textfile)
        problem = start_exporter(exporter, config.metrics)
        if problem is not None:  # no metrics is no reason to stop guarding
            events.say("metrics_error", "error", problem, error=problem)
    # Nothing before READY=1 calls NVML but the loop's first sample, within nvml_timeout
    # (a hung driver must not hold the start): the daemon says its config_warnings from
    # that sample. While a sample waits for NVML, systemd's watchdog is kept fed.
    watchdog_ns = watchdog_interval_ns()
    keepalive = KeepAlive(watchdog_ns, lambda: notify("WATCHDOG=1")) if watchdog_ns else None
    raise_open_files_limit()
    systemd = SystemdClient(config.daemon.bus)
    enforcing = not (args.dry_run or config.daemon.dry_run)
    if enforcing and any(not t.id.is_container and not t.protected for t in config.tenants):
        # Said now, not at the first breach: actions on units will fail until it can.
        problem = systemd.reachable()
        if problem is not None:
            events.say(
                "bus_unreachable",
                "warning",
                f"cannot reach systemd on the {config.daemon.bus} bus: {problem}; restarting "
                "or stopping unit tenants fails until it can (such attempts do not count "
                "toward max_restarts)",
                bus=config.daemon.bus,
                error=problem,
            )
    sampler = Sampler(NvmlSource(), ProcFs(), keepalive=keepalive)
    running: list[Daemon] = []
    # Containers are acted on with the running config's socket and stop_timeout
    # (they follow a reload); the Engine API is only reached for a container tenant.
    containers = ContainerActuator(lambda: running[0].config)
    daemon = RecordingDaemon(
        path,
        config,
        Ports(
            sampler,
            Router(systemd, containers),
            events,
            metrics=metrics,
            state=StateStore(args.state_dir or default_dir()),
        ),
        force_dry_run=args.dry_run,
        record=args.record,
    )
    running.append(daemon)
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_status(args: argparse.Namespace) -> int:
    from vramwatch.status import collect, render_text

    path, config = _load(args)
    untrusted = _untrusted(path)
    if untrusted is not None:  # a look is harmless; say what run will do with it
        print(f"vramwatch: warning: {path}: run refuses this config: {untrusted}", file=sys.stderr)
    report = collect(config)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(render_text(report))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """``vramwatch replay``: exit 0, 1 (unreadable or damaged trace, or no plot), 2 (usage),
    78 (a config given or recorded that is not valid)."""
    try:
        start = _replay_time(args.start) if args.start else None
        end = _replay_time(args.end) if args.end else None
    except ValueError as exc:
        print(f"vramwatch: replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configs: list[Path] = args.replay_configs or []
    if len(configs) > 2:
        print("vramwatch: replay: at most two configs (-c A -c B) to compare", file=sys.stderr)
        return EXIT_USAGE
    if args.plot is not None:
        if Path(args.plot).suffix.lower() not in (".png", ".svg"):
            print(
                f"vramwatch: replay: --plot: expected a .png or .svg file, got {args.plot}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        from vramwatch.record import plot

        problem = plot.available()
        if problem is not None:
            print(f"vramwatch: replay: --plot: {problem}", file=sys.stderr)
            return EXIT_FAILURE
    from vramwatch.record import report
    from vramwatch.record.format import TraceError
    from vramwatch.record.replay import replay
    from vramwatch.record.trace import segments

    try:
        paths = segments(Path(args.trace))
        loaded = [(p.name, load(p)) for p in configs]
        if len({name for name, _ in loaded}) < len(loaded):
            loaded = [(str(p), c) for p, (_, c) in zip(configs, loaded, strict=True)]
        window = (start, end)
        plotting = args.plot is not None
        if not loaded:
            results = [replay(paths, None, label="recorded", window=window, plot=plotting)]
        else:
            results = [replay(paths, c, label=n, window=window, plot=plotting) for n, c in loaded]
    except TraceError as exc:
        print(f"vramwatch: replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:
        print(f"vramwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if len(results) == 1:
        lines = report.one(results[0], args.json)
    else:
        lines = report.compare(results[0], results[1], args.json)
    for line in lines:
        print(line)
    status = EXIT_OK
    for path in results[0].unfinished:
        print(
            f"vramwatch: replay: note: {path} is still being written (or its writer was "
            "stopped without closing it): replayed up to its last complete tick",
            file=sys.stderr,
        )
    for damage in results[0].damage:
        print(f"vramwatch: replay: {damage}", file=sys.stderr)
        status = EXIT_FAILURE
    if args.plot is not None:
        try:
            plot.draw(results, Path(args.plot))
        except OSError as exc:
            print(
                f"vramwatch: replay: --plot: cannot write {args.plot}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(f"vramwatch: replay: plot written to {args.plot}", file=sys.stderr)
    return status


def _replay_time(text: str) -> int:
    """--from/--to: an ISO 8601 time (local time when no zone is given) -> wall ms."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'expected a time such as "2026-12-02T06:00:00Z" or "2026-12-02 07:00", got "{text}"'
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)
