"""What tests read back from the stand-in (requests, faults) and its watch bookkeeping."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from agent.sim.kube_api.resources import _TRUE, JsonObj


@dataclass
class RequestRecord:
    """One HTTP request the stand-in received (``status`` is filled once answered)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str
    headers: dict[str, str]  # names in lower case
    status: int | None = None

    @property
    def watch(self) -> bool:
        return self.query.get("watch", "") in _TRUE


@dataclass
class Fault:
    """An injected failure: matching requests wait ``delay`` then answer ``status`` (if set)."""

    path_regex: re.Pattern[str]
    method: str | None
    status: int | None
    times: int | None  # None: until cleared
    delay: float
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and self.path_regex.search(path) is not None
                and (self.times is None or self.hits < self.times))


@dataclass
class _Change:
    rv: int
    storage: str
    type: str
    obj: JsonObj
    old: JsonObj | None


@dataclass(eq=False)
class _OpenWatch:
    path: str
    sock: socket.socket
    dropped: bool = False
