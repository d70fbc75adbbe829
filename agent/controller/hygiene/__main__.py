"""``python -m agent.controller.hygiene run|restore ...``: the same arguments as ``steward
hygiene`` (which the CLI wires to ``commands``), for subprocess tests and debugging."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.controller.hygiene.commands import EXIT_USAGE, restore_hygiene, run_hygiene
from agent.controller.hygiene.registry import JOBS
from agent.log import configure_logging, register_secret


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None)
    common.add_argument("--log-format", choices=("json", "text"), default="json")
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info")
    parser = argparse.ArgumentParser(prog="python -m agent.controller.hygiene")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="plan (and with --apply, act)")
    run.add_argument("job", choices=list(JOBS))
    run.add_argument("--apply", action="store_true")
    run.add_argument("--output", choices=("table", "json"), default="table")
    restore = sub.add_parser("restore", parents=[common], help="undo an applied action")
    restore.add_argument("job", choices=list(JOBS))
    restore.add_argument("resource")
    args = parser.parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"steward: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    token = config.slack.token
    register_secret(token.get_secret_value() if token is not None else None)
    if args.command == "run":
        return run_hygiene(config, args.job, apply=args.apply, output=args.output)
    return restore_hygiene(config, args.job, args.resource)


if __name__ == "__main__":
    sys.exit(main())
