"""Named crash points for the crash-safety tests: ``STEWARD_HYGIENE_CRASH_AT=<name>`` makes
the process SIGKILL itself when it reaches that point (no cleanup, like a node dying).

Each point sits between two durable effects (a state-store commit, an API write), so a test
that kills the process at every point covers every partial state a real crash can leave.
"""

from __future__ import annotations

import os
import signal
from typing import Final

CRASH_ENV: Final = "STEWARD_HYGIENE_CRASH_AT"

# In the order a run reaches them.
RUN_STARTED: Final = "run-started"  # the run row is committed
PLAN_RECORDED: Final = "plan-recorded"  # the plan is committed, nothing acted on yet
MARK_RECORDED: Final = "mark-recorded"  # the mark row (and its audit entry) is committed
MARK_ANNOTATED: Final = "mark-annotated"  # the job recorded the mark on the resource
OWNER_NOTIFIED: Final = "owner-notified"  # the owner was told, not yet recorded
RESTORE_RECORDED: Final = "restore-recorded"  # the restore record is committed
ACTION_CLAIMED: Final = "action-claimed"  # the action's idempotency key is committed
ACT_ANNOTATED: Final = "act-annotated"  # idle-gpus: restore annotation written, not scaled
ACTED: Final = "acted"  # the action happened, not yet recorded
ACTION_RECORDED: Final = "action-recorded"  # the action and the closed mark are committed
UNMARK_APPLIED: Final = "unmark-applied"  # the mark is lifted on the resource, not in the store
RUN_FINISHED: Final = "run-finished"

POINTS: Final = (RUN_STARTED, PLAN_RECORDED, MARK_RECORDED, MARK_ANNOTATED, OWNER_NOTIFIED,
                 RESTORE_RECORDED, ACTION_CLAIMED, ACT_ANNOTATED, ACTED, ACTION_RECORDED,
                 UNMARK_APPLIED, RUN_FINISHED)


def checkpoint(name: str) -> None:
    """Die here if the crash test asked for it; otherwise a dictionary lookup."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
