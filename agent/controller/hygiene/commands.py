"""``steward hygiene run JOB`` and ``steward hygiene restore JOB RESOURCE``: build the runtime
from the config, run, print the plan, map the outcome to the exit code.

Exit codes: 0 the run succeeded (or the restore was done); 1 the run failed, tripped its
caps or met the kill switch, or the restore failed or found the world not ready (the record
is kept); 2 bad usage or config (unknown job, unusable setting, no cluster configured where
the job needs one, nothing to restore, another restore of the same action in progress).
"""

from __future__ import annotations

import sys
from typing import Any, Final, TextIO

from agent.config import StewardConfig
from agent.controller.hygiene.context import JobUnavailable
from agent.controller.hygiene.crashpoints import Checkpoint, no_checkpoint
from agent.controller.hygiene.engine import NothingToRestore, RestoreBusy, RestoreFailed
from agent.controller.hygiene.jobs import UnknownJob, check_name
from agent.controller.hygiene.output import ProgressBar, render_json, render_table
from agent.controller.hygiene.runner import HygieneRuntime

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2
OUTPUTS: Final = ("table", "json")


class _Usage(Exception):
    pass


def _cluster(config: StewardConfig) -> Any | None:
    from agent.clients.kubernetes.api import KubeConfigError, api_client, cluster_configured

    if not cluster_configured(config.kubernetes):
        return None
    try:
        return api_client(config.kubernetes, "hygiene")
    except KubeConfigError as exc:
        raise _Usage(str(exc)) from exc


def _runtime(config: StewardConfig, job: str, stderr: TextIO, api_client: Any | None,
             checkpoint: Checkpoint) -> HygieneRuntime:
    check_name(job)
    client = api_client if api_client is not None else _cluster(config)
    return HygieneRuntime(config, api_client=client, progress=ProgressBar(stderr),
                          checkpoint=checkpoint)


def run_hygiene(config: StewardConfig, job: str, *, apply: bool, output: str = "table",
                stdout: TextIO | None = None, stderr: TextIO | None = None,
                api_client: Any | None = None, checkpoint: Checkpoint = no_checkpoint) -> int:
    """One run of ``job``; dry-run unless ``apply``. Prints the plan on ``stdout``."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        if output not in OUTPUTS:
            raise _Usage(f"--output must be one of {', '.join(OUTPUTS)}, not {output!r}")
        runtime = _runtime(config, job, err, api_client, checkpoint)
        engine = runtime.engine(job)
    except (UnknownJob, JobUnavailable, _Usage) as exc:
        print(f"steward: {exc}", file=err)
        return EXIT_USAGE
    except Exception as exc:  # the state store cannot be opened, the API client failed
        print(f"steward: hygiene {job}: {type(exc).__name__}: {exc}", file=err)
        return EXIT_RUNTIME
    outcome = engine.run(apply=apply)
    if outcome.plan is not None:
        text = render_json(outcome.plan) if output == "json" else render_table(
            outcome.plan, outcome)
        print(text, file=out)
    if outcome.ok:
        return EXIT_OK
    print(f"steward: hygiene {job} {outcome.mode}: {outcome.result}: {outcome.reason}",
          file=err)
    return EXIT_RUNTIME


def restore_hygiene(config: StewardConfig, job: str, resource: str, *,
                    stdout: TextIO | None = None, stderr: TextIO | None = None,
                    api_client: Any | None = None,
                    checkpoint: Checkpoint = no_checkpoint) -> int:
    """Undo the newest applied action of ``job`` on ``resource`` from its restore record."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        runtime = _runtime(config, job, err, api_client, checkpoint)
        outcome = runtime.restore(job, resource)
    except (UnknownJob, JobUnavailable, NothingToRestore, RestoreBusy, _Usage) as exc:
        print(f"steward: {exc}", file=err)
        return EXIT_USAGE
    except RestoreFailed as exc:
        print(f"steward: hygiene restore {job} {resource} not done: {exc}", file=err)
        return EXIT_RUNTIME
    except Exception as exc:
        print(f"steward: hygiene restore {job} {resource}: {type(exc).__name__}: {exc}",
              file=err)
        return EXIT_RUNTIME
    if outcome.restored:
        print(f"restored {outcome.resource}: {outcome.message}", file=out)
    else:
        print(f"{outcome.resource}: {outcome.message}", file=out)
    return EXIT_OK
