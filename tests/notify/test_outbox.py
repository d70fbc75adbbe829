"""The outbox on a real SQLite file: group commit, markers, stats, pruning, id order."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.notify.incident import accumulate
from agent.notify.outbox import (
    DELIVERED_RETENTION_SECONDS,
    RESOLVED_GROUP_RETENTION_SECONDS,
    TABLES,
    Inflight,
    Outbox,
    OutboxUnavailable,
    Outcome,
)
from agent.notify.webhook import Notification, parse_notification
from agent.state import open_store
from tests.notify.payloads import alert, webhook


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_store(f"sqlite:///{tmp_path / 'outbox.db'}", tables=[TABLES])


def note(group: str = "g", *, hostname: str = "n") -> Notification:
    return parse_notification(json.dumps(webhook([alert(hostname=hostname)],
                                                 group_key=group)).encode())


def test_concurrent_webhooks_share_commits_and_keep_their_ids(engine: Engine) -> None:
    seen: list[int] = []
    outbox = Outbox(engine, on_enqueued=lambda items: seen.extend(i for _, i in items))
    outbox.start()
    ids: list[int] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        new_id = outbox.enqueue(note(f"group-{n % 5}", hostname=f"n{n}"))
        with lock:
            ids.append(new_id)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outbox.stop()
    assert sorted(ids) == list(range(1, 41)) and sorted(seen) == sorted(ids)
    assert outbox.stats().depth == 40
    assert sum(len(outbox.pending(g)) for g in outbox.pending_groups()) == 40
    assert outbox.refresh_stats().depth == 40


def test_enqueue_refuses_when_the_writer_is_stopped(engine: Engine) -> None:
    with pytest.raises(OutboxUnavailable):
        Outbox(engine).enqueue(note())


def test_commit_marks_delivered_and_records_the_group(engine: Engine) -> None:
    clock = Clock()
    outbox = Outbox(engine, clock=clock)
    outbox.start()
    first = outbox.enqueue(note(hostname="a"))
    second = outbox.enqueue(note(hostname="b"))
    group_id = note().group_id
    alerts, _ = accumulate({}, [p.notification for p in outbox.pending(group_id)])
    marker = Inflight(op_id="op-1", kind="root", since=clock.now, channel="#c", thread_ts=None,
                      outcome=Outcome((first,), alerts, False, first, lane="#c"))
    outbox.mark_inflight(group_id, "g", marker)
    state = outbox.group(group_id)
    assert state is not None and state.inflight == marker  # survives the JSON round trip
    outbox.commit(group_id, "g", Outcome((first,), alerts, False, first, lane="#c",
                                         channel_id="C123", ts="1.000001"))
    state = outbox.group(group_id)
    assert state is not None and state.inflight is None
    assert (state.lane, state.channel_id, state.ts) == ("#c", "C123", "1.000001")
    assert [p.id for p in outbox.pending(group_id)] == [second]
    assert outbox.stats().depth == 1 and outbox.channel_id("#c") == "C123"
    outbox.stop()


def test_prune_keeps_ids_increasing(engine: Engine) -> None:
    clock = Clock()
    outbox = Outbox(engine, clock=clock)
    outbox.start()
    first = outbox.enqueue(note())
    group_id = note().group_id
    alerts, _ = accumulate({}, [p.notification for p in outbox.pending(group_id)])
    outbox.commit(group_id, "g", Outcome((first,), alerts, True, first, lane="#c",
                                         channel_id="C1", ts="1.1"))
    clock.now += max(DELIVERED_RETENTION_SECONDS, RESOLVED_GROUP_RETENTION_SECONDS) + 1
    assert outbox.prune() == 1
    assert outbox.group(group_id) is None
    # AUTOINCREMENT: the id of a pruned row is never handed out again
    assert outbox.enqueue(note()) > first
    outbox.stop()
