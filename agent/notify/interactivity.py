"""Wires the notifier's Slack interactivity: the ``/slack/actions`` endpoint (when a signing
secret is configured), the click handlers, and the action worker with its periodic work
(graphs of firing alerts, the forgotten-silences digest)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from agent.clients.alertmanager import AlertmanagerClient
from agent.clients.prometheus import PrometheusClient
from agent.clients.slack import SlackSink
from agent.config import StewardConfig
from agent.notify.actions import (
    ActionStore,
    ActionWorker,
    Authorisation,
    Handler,
    Periodic,
    SlackActionsEndpoint,
)
from agent.notify.alert_links import LinkSettings
from agent.notify.blocks import AlertActions
from agent.notify.graphs import GraphPoster, catalog_expressions
from agent.notify.group_lock import GroupLocks
from agent.notify.hygiene_choices import HYGIENE, Admins, HygieneChoices
from agent.notify.outbox import Outbox
from agent.notify.signing import signing_secret_from
from agent.notify.silences import ACK, UNACK, Acknowledger, ForgottenSilences, SilenceBook

# The digest is due at most this late after its cron time.
DIGEST_CHECK_SECONDS = 600.0
# How soon after an alert's root is posted its graph follows, at most.
GRAPH_EVERY_SECONDS = 2.0
# A graph is not worth a long wait: the worker also carries out clicks.
GRAPH_QUERY_SECONDS = 5.0


@dataclass
class Interactivity:
    worker: ActionWorker | None
    endpoint: SlackActionsEndpoint | None
    actions_for: Callable[[str], AlertActions | None] | None
    acknowledger: Acknowledger | None = None
    digest: ForgottenSilences | None = None


def build_interactivity(config: StewardConfig, *, outbox: Outbox, engine: Engine,
                        sink: SlackSink, locks: GroupLocks, links: LinkSettings,
                        environ: Mapping[str, str],
                        expressions: Mapping[str, str] | None = None,
                        clock: Callable[[], float] = time.time) -> Interactivity:
    settings = config.notifier.actions
    secret = signing_secret_from(config.slack.signing_secret_file, environ)
    store = ActionStore(outbox, engine, clock=clock)
    handlers: dict[str, Handler] = {}
    periodic: list[Periodic] = []
    acknowledger = None
    digest = None
    am_url = config.alertmanager.resolved_api_url()
    if am_url:
        alertmanager = AlertmanagerClient(am_url)
        book = SilenceBook(outbox, engine, clock=clock)
        if secret is not None:
            acknowledger = Acknowledger(outbox=outbox, engine=engine, book=book, sink=sink,
                                        alertmanager=alertmanager, locks=locks, links=links,
                                        clock=clock, monday_hour=settings.monday_hour_utc)
            handlers[ACK] = acknowledger.ack
            handlers[UNACK] = acknowledger.unack
        channel = config.slack.default_channel
        if settings.forgotten_silences_schedule and channel:
            digest = ForgottenSilences(outbox=outbox, engine=engine, book=book,
                                       alertmanager=alertmanager, sink=sink, channel=channel,
                                       cron=settings.forgotten_silences_schedule, clock=clock)
            periodic.append(Periodic("forgotten-silences", DIGEST_CHECK_SECONDS, digest.run))
    if settings.hygiene_buttons and secret is not None:
        admins = Admins(sink, users=frozenset(settings.admin_users), group=settings.admin_group)
        handlers[HYGIENE] = HygieneChoices(engine=engine, sink=sink, admins=admins,
                                           snooze_cap_seconds=settings.snooze_max_hours * 3600,
                                           clock=clock)
    if settings.graphs:
        poster = GraphPoster(outbox=outbox, engine=engine, sink=sink,
                             prometheus=PrometheusClient(config.prometheus.url,
                                                         timeout=GRAPH_QUERY_SECONDS),
                             expressions=expressions or catalog_expressions(), clock=clock)
        periodic.append(Periodic("graphs", GRAPH_EVERY_SECONDS, poster.run))
    if not handlers and not periodic:
        return Interactivity(worker=None, endpoint=None, actions_for=None)
    worker = ActionWorker(store=store, sink=sink, handlers=handlers,
                          authorisation=Authorisation(frozenset(settings.allowed_users)),
                          periodic=periodic, clock=clock)
    endpoint = None if secret is None else SlackActionsEndpoint(
        secret, store, kinds=list(handlers), on_accepted=worker.wake, clock=clock)
    return Interactivity(worker=worker, endpoint=endpoint,
                         actions_for=acknowledger.actions_for if acknowledger else None,
                         acknowledger=acknowledger, digest=digest)
