"""Assembles the notifier: store -> outbox -> delivery worker -> Slack, behind the HTTP server.

``build_notifier`` makes one without starting it (tests start it in-process on port 0);
``run_notifier`` is ``steward notifier``: it runs until SIGTERM or SIGINT and stops cleanly.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from agent.clients.slack import SlackSink
from agent.clients.slack_params import SlackSettings
from agent.config import StewardConfig
from agent.exporter.server import parse_listen
from agent.log import register_secret
from agent.notify.actions import ActionWorker
from agent.notify.alert_links import LinkSettings
from agent.notify.delivery import Delivery
from agent.notify.group_lock import GroupLocks, StoreInUse, group_locks_for
from agent.notify.interactivity import build_interactivity
from agent.notify.metrics import NotifierMetrics
from agent.notify.outbox import TABLES, Outbox, add_missing_columns
from agent.notify.owners import OwnerNotices
from agent.notify.server import BearerAuth, NotifierServer, auth_from
from agent.notify.worker import DeliveryWorker
from agent.signals import stop_on_signals
from agent.state import StoreCreatedCollector, open_store, store_identity

log = logging.getLogger(__name__)
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
# pg_advisory_lock key under which replicas starting together create the tables one by one.
_SCHEMA_LOCK = 0x5374_6478
UNAUTHENTICATED_WARNING = (
    "the notifier accepts webhooks WITHOUT authentication (notifier.allow_unauthenticated): "
    "anyone who reaches its port can page on-call; set notifier.auth_token_file")


@dataclass
class Notifier:
    engine: Engine
    outbox: Outbox
    worker: DeliveryWorker
    server: NotifierServer
    metrics: NotifierMetrics
    locks: GroupLocks
    actions: ActionWorker | None = None
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.outbox.start()
        self.worker.start()
        if self.actions is not None:
            self.actions.start()
        self.server.start()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.stop()  # no new webhooks first; the outbox keeps what was acknowledged
        self.worker.stop()
        if self.actions is not None:
            self.actions.stop()
        self.outbox.stop()
        self.locks.close()
        self.engine.dispose()


def _secret_file_problem(key: str, path: Path) -> list[str]:
    try:
        if not path.read_text(encoding="utf-8").strip():
            return [f"{key}: {path} is empty"]
    except OSError as exc:
        return [f"{key}: cannot read {path}: {exc.strerror or exc}"]
    return []


def config_problems(config: StewardConfig, *,
                    environ: Mapping[str, str] | None = None) -> list[str]:
    """What keeps ``steward notifier`` from starting, one line per key."""
    env = os.environ if environ is None else environ
    problems = []
    try:
        token = config.slack.resolved_token()
    except OSError as exc:
        problems.append(f"slack.token_file: cannot read {config.slack.token_file}: "
                        f"{exc.strerror or exc}")
    else:
        if token is None or not token.get_secret_value():
            problems.append("slack.token: not set (set SLACK_BOT_TOKEN or slack.token_file)")
    if config.slack.default_channel is None:
        problems.append("slack.default_channel: required by the notifier (alerts no route "
                        "matches go there)")
    secret_file = config.slack.signing_secret_file
    if secret_file is not None:
        problems.extend(_secret_file_problem("slack.signing_secret_file", secret_file))
    token_file = config.notifier.auth_token_file
    if token_file is not None:
        problems.extend(_secret_file_problem("notifier.auth_token_file", token_file))
    elif env.get("STEWARD_NOTIFIER_AUTH_TOKEN") == "":
        problems.append("STEWARD_NOTIFIER_AUTH_TOKEN: set but empty")
    elif "STEWARD_NOTIFIER_AUTH_TOKEN" not in env and not config.notifier.allow_unauthenticated:
        problems.append(
            "notifier.auth_token_file: not set; the notifier does not run without a bearer "
            "token (set notifier.auth_token_file or STEWARD_NOTIFIER_AUTH_TOKEN, or "
            "notifier.allow_unauthenticated: true to accept anyone's webhooks)")
    return problems


def open_notifier_store(url: str) -> Engine:
    """The state store with the notifier's tables. Replicas starting together on
    PostgreSQL create them one after the other (concurrent CREATE TABLEs collide)."""
    if make_url(url).get_backend_name() != "postgresql":
        engine = open_store(url, tables=[TABLES])
        add_missing_columns(engine)
        return engine
    guard = create_engine(url, poolclass=NullPool)
    try:
        with guard.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
            try:
                engine = open_store(url, tables=[TABLES])
                add_missing_columns(engine)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
    finally:
        guard.dispose()
    return engine


def build_notifier(config: StewardConfig, *, sink: SlackSink | None = None,
                   listen: str | None = None, retry_base_seconds: float = 1.0,
                   threads: int = 4, auth: BearerAuth | None = None,
                   environ: Mapping[str, str] | None = None,
                   clock: Callable[[], float] = time.time) -> Notifier:
    """A notifier wired from ``config``, not started. ``listen`` overrides notifier.listen
    ("127.0.0.1:0" picks a free port); ``sink`` replaces the Slack client built from config.

    Refuses (ValueError) to build one without a bearer token unless
    notifier.allow_unauthenticated; StoreInUse when another notifier holds its SQLite store.
    """
    env = dict(os.environ if environ is None else environ)
    slack = SlackSettings.from_config(config.slack)
    if sink is None:
        if slack.token is None:
            raise ValueError("slack.token is not set")
        register_secret(slack.token)
        sink = SlackSink.create(slack)
    if auth is None:
        auth = auth_from(config.notifier.auth_token_file, env)
    if auth is None and not config.notifier.allow_unauthenticated:
        raise ValueError("notifier: no bearer token (notifier.auth_token_file or "
                         "STEWARD_NOTIFIER_AUTH_TOKEN) and notifier.allow_unauthenticated "
                         "is not set")
    engine = open_notifier_store(config.state.url)
    try:
        locks = group_locks_for(engine)
    except Exception:
        engine.dispose()
        raise
    outbox = Outbox(engine, clock=clock)

    def stats() -> tuple[int, float | None, int]:
        current = outbox.stats()
        return current.depth, current.oldest_received_at, current.dead_letters

    metrics = NotifierMetrics(stats, clock=clock)
    metrics.registry.register(StoreCreatedCollector(store_identity(engine)))
    router = slack.router()
    links = LinkSettings(
        runbook_base_url=config.runbooks.base_url, grafana_url=config.grafana.url,
        alertmanager_url=config.alertmanager.url,
        dashboard_window=timedelta(minutes=config.notifier.dashboard_window_minutes))
    interactive = build_interactivity(config, outbox=outbox, engine=engine, sink=sink,
                                      locks=locks, links=links, environ=env, clock=clock)
    delivery = Delivery(outbox, sink, router, links, clock=clock, on_write=metrics.slack_ok,
                        stale_window=timedelta(
                            seconds=config.notifier.stale_firing_window_seconds),
                        owners=OwnerNotices(config.slack.team_channels),
                        actions_for=interactive.actions_for)
    if interactive.acknowledger is not None:
        interactive.acknowledger.render_with(delivery.render_root)
    worker = DeliveryWorker(delivery, outbox, metrics,
                            pacing_seconds=config.notifier.channel_pacing_seconds,
                            retry_base_seconds=retry_base_seconds,
                            retry_max_seconds=config.notifier.retry_max_seconds,
                            max_attempts=config.notifier.max_attempts,
                            poll_seconds=config.notifier.poll_seconds,
                            threads=threads, locks=locks, clock=clock)
    outbox.set_listener(worker.notify)
    server = NotifierServer(
        parse_listen(listen or config.notifier.listen),
        persist=lambda notification, body: outbox.enqueue(notification, body=body),
        metrics=metrics,
        healthy=worker.alive, ready=lambda: worker.alive() and outbox.running,
        max_body_bytes=config.notifier.max_body_bytes, auth=auth,
        slack_actions=interactive.endpoint)
    return Notifier(engine=engine, outbox=outbox, worker=worker, server=server, metrics=metrics,
                    locks=locks, actions=interactive.worker)


def run_notifier(config: StewardConfig, *, stop: threading.Event | None = None,
                 on_started: Callable[[Notifier], None] | None = None) -> int:
    """``steward notifier``: serve until SIGTERM/SIGINT. Exit 2 on bad config."""
    problems = config_problems(config)
    if problems:
        for problem in problems:
            print(f"steward: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    stop = stop or threading.Event()
    stop_on_signals(stop)
    try:
        notifier = build_notifier(config)
    except StoreInUse as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if notifier.server.auth is None:
        log.warning(UNAUTHENTICATED_WARNING)
    notifier.start()
    log.info("notifier started", extra={
        "listen": config.notifier.listen, "port": notifier.port,
        "state": config.state.url.split("://", 1)[0], "depth": notifier.outbox.stats().depth,
        "auth": notifier.server.auth is not None})
    if on_started is not None:
        on_started(notifier)
    stop.wait()
    log.info("notifier stopping", extra={"depth": notifier.outbox.stats().depth})
    notifier.stop()
    return EXIT_OK
