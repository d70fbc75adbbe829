"""``python -m tests.hygiene.crash_driver POINT CONFIG run JOB`` (``plan JOB`` for a dry run, or
``restore JOB RESOURCE``):
the hygiene command of the CLI, with a checkpoint injected that SIGKILLs this process when
the engine reaches POINT, as a node dying would (no cleanup, no ``finally``).

Product code never reads a crash point from the environment; this is the only place one is
made to fire.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from agent.config import load_config
from agent.controller.hygiene.commands import restore_hygiene, run_hygiene
from agent.log import configure_logging


def die_at(point: str) -> Callable[[str], None]:
    def checkpoint(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def main(argv: list[str]) -> int:
    point, config_path, command, job, *rest = argv
    configure_logging(fmt="json", level="info")
    config = load_config(config_path)
    checkpoint = die_at(point)
    if command in ("run", "plan"):
        return run_hygiene(config, job, apply=command == "run", output="json",
                           checkpoint=checkpoint)
    (resource,) = rest
    return restore_hygiene(config, job, resource, checkpoint=checkpoint)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
