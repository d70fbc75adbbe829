"""The clicks' store: a signature is accepted once (the replay guard), and a click is
carried out by one replica at a time (a claim with a lease)."""

from __future__ import annotations

from pathlib import Path

from agent.notify.actions import ActionStore, Click
from agent.notify.app import open_notifier_store
from agent.notify.outbox import Outbox

CLICK = Click(kind="ack", args={"g": "g1", "f": "f1", "d": "1h"}, user_id="U0ALICE",
              user_name="alice", channel_id="C0123456", message_ts="1.0")


def test_replay_guard_and_claims(tmp_path: Path) -> None:
    engine = open_notifier_store(f"sqlite:///{tmp_path / 'state.db'}")
    now = [1000.0]
    outbox = Outbox(engine, clock=lambda: now[0])
    store = ActionStore(outbox, engine, clock=lambda: now[0])
    first = store.accept("v0=abc", 990.0, CLICK)
    assert first is not None
    assert store.accept("v0=abc", 990.0, CLICK) is None  # the same signed request again
    [due] = store.due()
    other = ActionStore(outbox, engine, clock=lambda: now[0])  # another replica
    assert store.claim(due) is True
    assert other.claim(due) is False and other.due() == []
    now[0] += 121  # the lease of a replica that died runs out
    [again] = other.due()
    assert other.claim(again) is True
    store.finish(again, "done", "ok")
    assert store.due() == [] and store.get(first)["state"] == "done"  # type: ignore[index]
    engine.dispose()
