"""Named crash points of the hygiene engine, for the crash-safety tests.

Each point sits between two durable effects (a state-store commit, an API write), so a test
that kills the process at every point covers every partial state a real crash can leave.
The engine calls the ``checkpoint`` it was given at each; product code passes the no-op, a
test passes one that SIGKILLs the process at the point it names. Crashes *inside* an
external call (after the server acted, before its reply was read) are made by the tests
from outside, holding the server's reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

Checkpoint = Callable[[str], None]

# In the order a run reaches them.
RUN_STARTED: Final = "run-started"  # the run row is committed
PLAN_RECORDED: Final = "plan-recorded"  # the plan is committed, nothing acted on yet
MARK_RECORDED: Final = "mark-recorded"  # the mark row (and its audit entry) is committed
MARK_ANNOTATED: Final = "mark-annotated"  # the job recorded the mark on the resource (a tag)
OWNER_NOTIFIED: Final = "owner-notified"  # the owner was told, not yet recorded
ACTION_CLAIMED: Final = "action-claimed"  # restore record + intent committed, not acted
ACTED: Final = "acted"  # the action happened, not yet recorded
ACTION_RECORDED: Final = "action-recorded"  # the action and the closed mark are committed
ANNOUNCED: Final = "announced"  # Event, metric and owner notice sent, not yet recorded
UNMARK_APPLIED: Final = "unmark-applied"  # the mark is lifted on the resource, not in the store
RUN_FINISHED: Final = "run-finished"
# A restore (``steward hygiene restore``):
RESTORE_CLAIMED: Final = "restore-claimed"  # the restore claim is committed, nothing undone
RESTORED: Final = "restored"  # the resource is back, not yet recorded

POINTS: Final = (RUN_STARTED, PLAN_RECORDED, MARK_RECORDED, MARK_ANNOTATED, OWNER_NOTIFIED,
                 ACTION_CLAIMED, ACTED, ACTION_RECORDED, ANNOUNCED, UNMARK_APPLIED,
                 RUN_FINISHED, RESTORE_CLAIMED, RESTORED)


def no_checkpoint(name: str) -> None:
    """What production runs pass: nothing happens at any point."""
