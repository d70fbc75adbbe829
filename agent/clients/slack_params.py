"""The Slack sink's typed settings (``slack.*``): the token, the API, and which channel a
message goes to: ``slack.routes`` (first match wins), else ``slack.default_channel``.

A route matches a message (an alert group, an owner notice) when one of its label sets
carries every label of the route's ``match``. Routes are tried in order, so listing the
``severity: critical`` route first sends a group with one critical alert among warnings to
the critical channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.config import SlackConfig


@dataclass(frozen=True)
class Route:
    match: Mapping[str, str]
    channel: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(name) == value for name, value in self.match.items())

    @property
    def items(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.match.items())


class NoChannel(LookupError):
    """No route matched and no default channel is configured."""


class Router:
    def __init__(self, routes: Sequence[Route], *, default_channel: str | None) -> None:
        self._routes = tuple(routes)
        # Each route as a set of (label, value): matching a label set is then a subset test
        # in C, which a storm of new groups (every route x every alert) needs.
        self._matchers = tuple((route.items, route.channel) for route in self._routes)
        self._default = default_channel

    @property
    def default_channel(self) -> str | None:
        return self._default

    def channel_for(self, label_sets: Iterable[Mapping[str, str]]) -> str:
        item_sets = [one.items() for one in label_sets]
        for items, channel in self._matchers:
            for labels in item_sets:
                if items <= labels:
                    return channel
        if self._default is None:
            raise NoChannel("no slack.routes entry matches and slack.default_channel is unset")
        return self._default


@dataclass(frozen=True)
class SlackSettings:
    """What the sink and its router are built from; ``token`` None when none is configured."""

    api_url: str
    token: str | None
    default_channel: str | None = None
    routes: tuple[Route, ...] = ()
    timeout_seconds: float = 10.0

    @classmethod
    def from_config(cls, slack: SlackConfig, *, timeout_seconds: float = 10.0) -> SlackSettings:
        """From the ``slack`` section; the token read from the environment or its file (an
        OSError names a file that cannot be read)."""
        token = slack.resolved_token()
        return cls(api_url=slack.api_url,
                   token=token.get_secret_value() if token is not None else None,
                   default_channel=slack.default_channel,
                   routes=tuple(Route(r.match, r.channel) for r in slack.routes),
                   timeout_seconds=timeout_seconds)

    def router(self) -> Router:
        return Router(self.routes, default_channel=self.default_channel)
