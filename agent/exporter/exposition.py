"""Rendering ``/metrics`` bodies once per collection, not once per scrape.

Collections publish every few seconds; scrapes come from one or more Prometheus replicas.
Rendering (and gzipping) when a collection publishes — for the formats scrapers asked for
recently — makes a scrape a dictionary lookup, so its cost does not grow with the number of
series or scrapers. A format nobody asked for yet is rendered on first request.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

# The classic text format: every Prometheus 2.x parses it.
TEXT_TYPE = exposition.CONTENT_TYPE_PLAIN_0_0_4
OPENMETRICS_TYPE = openmetrics.CONTENT_TYPE_LATEST
# Formats not requested for this long stop being rendered eagerly.
_EAGER_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    gzipped: bool


class _Families:
    """Adapts a list of families to the ``collect()`` shape prometheus-client renders."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def wants_openmetrics(accept: str) -> bool:
    return any(part.split(";")[0].strip() == "application/openmetrics-text"
               for part in accept.split(","))


def wants_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


class Exposition:
    def __init__(self, families: Callable[[], list[Metric]], *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._families = families
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._generation = 0
        self._cache: dict[tuple[bool, bool], tuple[int, Body]] = {}
        self._last_asked: dict[tuple[bool, bool], float] = {}

    def _render(self, families: list[Metric], openmetrics_format: bool, gzipped: bool) -> Body:
        source = _Families(families)
        if openmetrics_format:
            data, content_type = openmetrics.generate_latest(source), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
        else:
            data, content_type = exposition.generate_latest(source), TEXT_TYPE
        if gzipped:
            # Level 1: the payload is small text; higher levels cost CPU for little gain.
            data = gzip.compress(data, compresslevel=1)
        return Body(data, content_type, gzipped)

    def publish(self) -> None:
        """New data: re-render the formats recently asked for."""
        now = self._monotonic()
        with self._lock:
            self._generation += 1
            wanted = [key for key, asked in self._last_asked.items()
                      if now - asked < _EAGER_WINDOW_SECONDS]
            if not wanted:
                return
            families = self._families()
            for key in wanted:
                self._cache[key] = (self._generation, self._render(families, *key))

    def body(self, *, accept: str = "", accept_encoding: str = "") -> Body:
        key = (wants_openmetrics(accept), wants_gzip(accept_encoding))
        with self._lock:
            self._last_asked[key] = self._monotonic()
            cached = self._cache.get(key)
            if cached is not None and cached[0] == self._generation:
                return cached[1]
            body = self._render(self._families(), *key)
            self._cache[key] = (self._generation, body)
            return body
