"""Fixtures for the notifier: a Slack stub per test and notifiers started in-process on port 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import StewardConfig
from agent.notify.app import Notifier, build_notifier
from agent.sim.slack_stub import SlackStub
from tests.support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

TOKEN = "xoxb-test"
GRAFANA = "https://grafana.example"
RUNBOOKS = "https://runbooks.example/steward/runbooks"

MakeNotifier = Callable[..., Notifier]


def notifier_config(stub: SlackStub, state: Path | str, **sections: Any) -> StewardConfig:
    """``state``: a SQLite file, or a SQLAlchemy URL (PostgreSQL)."""
    data: dict[str, Any] = {
        "slack": {"api_url": stub.api_url, "token": TOKEN, "default_channel": "#alerts",
                  "routes": [{"match": {"severity": "critical"}, "channel": "#oncall"}]},
        "notifier": {"listen": "127.0.0.1:0", "channel_pacing_seconds": 0.0,
                     "allow_unauthenticated": True},
        "state": {"url": state if isinstance(state, str) else f"sqlite:///{state}"},
        "grafana": {"url": GRAFANA},
        "runbooks": {"base_url": RUNBOOKS},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return StewardConfig.model_validate(data)


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub(tokens=(TOKEN,)) as slack:
        yield slack


@pytest.fixture
def make_notifier(tmp_path: Path, stub: SlackStub) -> Iterator[MakeNotifier]:
    started: list[Notifier] = []

    def make(*, state: Path | str | None = None, retry_base_seconds: float = 0.02,
             start: bool = True, **sections: Any) -> Notifier:
        config = notifier_config(stub, state or tmp_path / "state.db", **sections)
        notifier = build_notifier(config, retry_base_seconds=retry_base_seconds, environ={})
        if start:
            notifier.start()
            started.append(notifier)
        return notifier

    yield make
    for notifier in started:
        notifier.stop()
