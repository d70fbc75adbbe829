"""Which Slack channel an alert group goes to: ``slack.routes`` (first match wins), else default.

A route matches a group when one of its alerts carries every label of the route's ``match``.
Routes are tried in order, so listing the ``severity: critical`` route first sends a group
with one critical alert among warnings to the critical channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


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
