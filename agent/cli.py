"""The ``steward`` command line: parses arguments, loads config, dispatches, maps exit codes.

Exit codes: 0 success, 2 bad usage or bad config (one line naming the problem, no
traceback), 1 runtime failure. Subcommands import their modules lazily so that the node
agent does not pay for the controller's libraries in memory or start-up time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import ConfigError, StewardConfig, load_config, with_overrides
from agent.errors import RuntimeFailure
from agent.log import configure_logging, register_secret

if TYPE_CHECKING:
    from agent.exporter.collection import Collector

log = logging.getLogger("agent.cli")
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments the parser could not catch: exit 2 with one line."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: $STEWARD_CONFIG, else built-in defaults)")
    parser.add_argument("--log-format", choices=("json", "text"), default="json",
                        help="JSON lines on stderr (default) or text for humans")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info")


def _accept_empty_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accept-empty-state", action="store_true",
        help="start although the state store lost what it held (missing, emptied, damaged, "
             "or without its write-ahead log): set what is left aside and begin with an "
             "empty store. Logged as an error. Without it, such a store stops the start.")


def _with_state(args: argparse.Namespace, config: StewardConfig, run: Callable[[], int]
                ) -> int:
    """Run a command that owns the state store: refuse a store that lost its state."""
    from agent.state import StateStoreError, check_store

    try:
        check_store(config.state.url, accept_empty=args.accept_empty_state)
        return run()
    except StateStoreError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _cmd_node(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.clients.kubernetes.api import KubeConfigError
    from agent.node.app import run_node

    try:
        if config.node.gpu_backend == "sim":
            # The CLI chooses the simulator; the node agent only gets its sources.
            from agent.sim.node import simulated_sources

            return run_node(config, sources=simulated_sources(config))
        return run_node(config)
    except KubeConfigError as exc:
        raise UsageError(str(exc)) from exc


def _cmd_controller(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.clients.kubernetes.api import KubeConfigError
    from agent.controller.app import run_controller

    def schedule_report(scheduler: object) -> object:
        # pandas and matplotlib load when the leader schedules the report, not at start.
        from agent.finops.report import schedule_finops_report

        return schedule_finops_report(scheduler, config)

    def team_info(api_client: Any, interval: float) -> Collector:
        # The GPU fault alerts' owners: namespace -> team, the report's own mapping.
        from kubernetes import client

        from agent.finops.team_info import namespace_teams_collector

        return namespace_teams_collector(client.CoreV1Api(api_client), interval,
                                         static=config.finops.namespace_teams,
                                         label=config.finops.team_label)

    try:
        # The CLI composes: the weekly FinOps report rides on the controller's scheduler,
        # FinOps' namespace -> team series on its leader's collectors.
        return _with_state(args, config, lambda: run_controller(
            config, scheduled=[schedule_report], leader_collectors=[team_info]))
    except KubeConfigError as exc:
        raise UsageError(str(exc)) from exc


def _cmd_report_finops(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.finops.report import run_finops_export, run_finops_report

    if args.export_parquet is not None:
        return run_finops_export(config, path=args.export_parquet, week=args.week)
    return run_finops_report(config, week=args.week, out_dir=args.out, slack=args.slack,
                             parquet=args.parquet)


def _cmd_notifier(args: argparse.Namespace, config: StewardConfig) -> int:
    if getattr(args, "notifier_action", None) == "dead-letters":
        from agent.notify.dead_letters import run_dead_letters

        return run_dead_letters(config, retry=args.retry, output=args.output,
                                include_replayed=args.all)
    from agent.notify.app import run_notifier

    return _with_state(args, config, lambda: run_notifier(config))


HYGIENE_JOBS = ("idle-gpus", "stale-images", "orphaned-buckets")


def _cmd_hygiene_run(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.controller.hygiene.commands import run_hygiene

    return _with_state(args, config, lambda: run_hygiene(config, args.job, apply=args.apply,
                                                          output=args.output))


def _cmd_hygiene_restore(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.controller.hygiene.commands import restore_hygiene

    return _with_state(args, config, lambda: restore_hygiene(config, args.job, args.resource))


def _cmd_demo(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.demo.run import DemoOptions, run_demo

    if args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    return run_demo(DemoOptions(duration=args.duration, prometheus=not args.no_prometheus,
                                seed=args.seed, out=args.out))


def _cmd_build(args: argparse.Namespace, config: StewardConfig) -> int:
    from agent.build import BuildError, build

    try:
        result = build(args.root, runbook_base_url=config.runbooks.base_url, check=args.check)
    except BuildError as exc:
        raise UsageError(str(exc)) from exc
    verb = "stale" if args.check else "wrote"
    for path in result.changed:
        print(f"{verb} {path}")
    for problem in result.problems:
        print(f"lint: {problem}", file=sys.stderr)
    if args.check and result.changed:
        print(f"steward build --check: {len(result.changed)} generated file(s) are stale; "
              "run steward build", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK if result.ok else EXIT_RUNTIME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward",
        description="Observability and ops automation for AI platforms on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"steward {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = sub.add_parser("node", help="run the node agent (DaemonSet): GPU metrics on /metrics",
                          description="Run the node agent: reads GPUs through NVML and serves "
                                      "/metrics, /healthz and /readyz.")
    _common(node)
    node.add_argument("--gpu-backend", choices=("nvml", "sim"), default=None,
                      help="nvml (real GPUs, default) or sim (the simulated GPUs)")
    node.add_argument("--listen", default=None, metavar="HOST:PORT",
                      help="address of the metrics endpoint (default 0.0.0.0:9400)")
    node.set_defaults(handler=_cmd_node, overrides=lambda a: {
        "node.gpu_backend": ("--gpu-backend", a.gpu_backend),
        "node.listen": ("--listen", a.listen)})

    controller = sub.add_parser(
        "controller", help="run the controller (leader-elected Deployment)",
        description="Run the controller: leader election on a Lease; the leader runs the "
                    "cluster collectors (pipelines, pending GPU pods) and the hygiene jobs. "
                    "Dry-run unless --apply or controller.apply.")
    _common(controller)
    controller.add_argument("--apply", action="store_true", default=None,
                            help="let hygiene jobs act (default: dry-run)")
    _accept_empty_state(controller)
    controller.set_defaults(handler=_cmd_controller, overrides=lambda a: {
        "controller.apply": ("--apply", a.apply)})

    notifier = sub.add_parser(
        "notifier", help="run the notifier: Alertmanager webhooks to Slack",
        description="Receive Alertmanager webhooks on POST /alertmanager, store them durably "
                    "and deliver one Slack message per alert group, updated in place.")
    _common(notifier)
    notifier.add_argument("--listen", default=None, metavar="HOST:PORT",
                          help="address of the webhook endpoint (default 0.0.0.0:9500)")
    _accept_empty_state(notifier)
    notifier.set_defaults(handler=_cmd_notifier, overrides=lambda a: {
        "notifier.listen": ("--listen", a.listen)})
    notifier_cmds = notifier.add_subparsers(dest="notifier_action", metavar="ACTION")
    dead_letters = notifier_cmds.add_parser(
        "dead-letters", help="list (and replay) alert groups the notifier could not deliver",
        description="List the alert groups the notifier gave up on after "
                    "notifier.max_attempts (a plain notice was posted in their place), or put "
                    "one back in the outbox with --retry; a running notifier delivers it.")
    # The common options again, without defaults: given before the action (steward
    # notifier --config F dead-letters) they must stand.
    dead_letters.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                              help="YAML config file (default: $STEWARD_CONFIG)")
    dead_letters.add_argument("--log-format", choices=("json", "text"),
                              default=argparse.SUPPRESS)
    dead_letters.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                              default=argparse.SUPPRESS)
    dead_letters.add_argument("--retry", type=int, default=None, metavar="ID",
                              help="replay dead letter ID")
    dead_letters.add_argument("--all", action="store_true",
                              help="list replayed dead letters too")
    dead_letters.add_argument("--output", choices=("table", "json"), default="table")

    hygiene = sub.add_parser("hygiene", help="run a hygiene job now, or undo an action")
    hygiene_cmds = hygiene.add_subparsers(dest="hygiene", metavar="ACTION", required=True)
    run = hygiene_cmds.add_parser(
        "run", help="plan a hygiene job (dry-run unless --apply)",
        description="Scan, plan and record a hygiene job's run. Dry-run by default: the plan "
                    "says what would be marked and swept; --apply marks new candidates and "
                    "sweeps marks past their deadline that are still non-compliant.")
    _common(run)
    run.add_argument("job", choices=HYGIENE_JOBS)
    run.add_argument("--apply", action="store_true", help="act (default: dry-run)")
    run.add_argument("--output", choices=("table", "json"), default="table")
    _accept_empty_state(run)
    run.set_defaults(handler=_cmd_hygiene_run)
    restore = hygiene_cmds.add_parser(
        "restore", help="undo an applied action from its restore record",
        description="Put a resource back as its restore record says (replicas, a deleted "
                    "pod, bucket or image, tags, policies) and say 'restored' only once it "
                    "is back. Exit 1 when it is not back yet (a pod still terminating: retry "
                    "later, the record is kept), 2 when another restore of the same action "
                    "is in progress or there is nothing to restore.")
    _common(restore)
    restore.add_argument("job", choices=HYGIENE_JOBS)
    restore.add_argument("resource", help="as in the plan, e.g. ml/Deployment/notebook or "
                                          "ml/notebook")
    _accept_empty_state(restore)
    restore.set_defaults(handler=_cmd_hygiene_restore)

    report = sub.add_parser("report", help="reports (the weekly FinOps cost report)")
    reports = report.add_subparsers(dest="report", metavar="REPORT", required=True)
    finops = reports.add_parser(
        "finops", help="GPU cost per team, allocated-but-idle cost, hygiene savings",
        description="Write the weekly FinOps report (report.html, report.md, CSVs, "
                    "summary.json) from Prometheus, or from a Parquet export offline.")
    _common(finops)
    finops.add_argument("--week", default=None, metavar="YYYY-Www",
                        help="ISO week, Monday 00:00 UTC to the next (default: last full week)")
    finops.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: finops.out_dir/<week>)")
    finops.add_argument("--slack", action="store_true",
                        help="post the summary and upload the report to finops.slack_channel")
    source = finops.add_mutually_exclusive_group()
    source.add_argument("--parquet", type=Path, default=None, metavar="FILE",
                        help="read the series from a Parquet export instead of Prometheus")
    source.add_argument("--export-parquet", type=Path, default=None, metavar="FILE",
                        help="write the week's series (and the week before) to FILE and stop")
    finops.set_defaults(handler=_cmd_report_finops)

    demo = sub.add_parser(
        "demo", help="the whole loop on an embedded simulated cluster, no cloud, no cluster",
        description="Start a simulated cluster (two GPU nodes with fault scenarios, the "
                    "Kubernetes API stand-in, moto for S3 and ECR), the node agents, the "
                    "controller (dry-run), the notifier, Prometheus and Alertmanager (Debian "
                    "packages; make demo installs them); show the alerts, the Slack messages, "
                    "the hygiene plans and the FinOps report of a simulated week.")
    _common(demo)
    demo.add_argument("--duration", type=float, default=150.0, metavar="SECONDS",
                      help="the most seconds to watch alerts and Slack; the watch ends "
                           "sooner, once every simulated fault has raised its alert "
                           "(default 150)")
    demo.add_argument("--no-prometheus", action="store_true",
                      help="do not start Prometheus and Alertmanager even if installed")
    demo.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    demo.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="where to keep everything it makes (default: a temp folder)")
    demo.set_defaults(handler=_cmd_demo)

    build = sub.add_parser(
        "build", help="write dashboards/*.json, alerts/*.yaml, check runbooks (idempotent)",
        description="Regenerate the alert rules, dashboards JSON and the runbooks' XID table "
                    "from their sources, then lint the alert catalog against the runbooks.")
    _common(build)
    build.add_argument("--root", type=Path, default=Path.cwd(),
                       help="the repository checkout (default: the current folder)")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 when a generated file is stale (CI)")
    build.set_defaults(handler=_cmd_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        config = load_config(args.config)
        overrides: Callable[[argparse.Namespace], dict[str, tuple[str, object]]] | None = \
            getattr(args, "overrides", None)
        if overrides is not None:
            config = with_overrides(config, overrides(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"steward: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    token = config.slack.token
    register_secret(token.get_secret_value() if token is not None else None)
    try:
        handler: Callable[[argparse.Namespace, StewardConfig], int] = args.handler
        return handler(args, config)
    except UsageError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeFailure as exc:
        print(f"steward: {exc.what}: {exc.check}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception as exc:
        # A bug, not a condition we know: the traceback goes to the log, and the last line
        # still says what failed in the one shape every command uses.
        log.exception("steward %s failed", args.command)
        print(f"steward: {args.command} failed: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}: the log line "
              "above has the traceback", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
