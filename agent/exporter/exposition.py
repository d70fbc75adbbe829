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
from prometheus_client.utils import floatToGoString

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


class OpenMetricsRenderer:
    """prometheus-client's OpenMetrics text, the same bytes, at a fifth of the CPU.

    Its ``generate_latest`` escapes every sample's name character by character and every
    label set afresh on each render (15 us a sample here: 5 ms for a node's 350 series, six
    times a minute). The series of a node barely change between renders, so the escaped
    name and label text of each are kept from one render to the next; each is still made by
    prometheus-client's own escaping functions, so the output is byte for byte its output
    (tests/node/test_exposition_render.py compares them). Families with exemplars or
    native histograms, which Steward does not emit, are rendered by prometheus-client.
    Not thread-safe: the exposition renders under its lock.
    """

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str, str, str], str] = {}
        self._names: dict[str, str] = {}
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def render(self, families: Iterable[Metric]) -> bytes:
        heads: dict[tuple[str, str, str, str], str] = {}
        names: dict[str, str] = {}
        labels: dict[tuple[tuple[str, str], ...], str] = {}
        old_heads, old_names, old_labels = self._heads, self._names, self._labels
        out: list[str] = []
        for family in families:
            if any(s.exemplar is not None or s.native_histogram is not None
                   for s in family.samples):
                out.append(openmetrics.generate_latest(  # type: ignore[no-untyped-call]
                    _Families([family])).decode("utf-8")[:-len("# EOF\n")])
                continue
            key = (family.name, family.documentation, family.type, family.unit)
            head = heads.get(key) or old_heads.get(key) or _head(*key)
            heads[key] = head
            out.append(head)
            for sample in family.samples:
                name = names.get(sample.name) or old_names.get(sample.name) or _sample_name(
                    sample.name)
                names[sample.name] = name
                items = tuple(sample.labels.items())
                label_text = labels.get(items)
                if label_text is None:
                    label_text = old_labels.get(items) or _label_text(items)
                    labels[items] = label_text
                timestamp = "" if sample.timestamp is None else f" {sample.timestamp}"
                value = "" if sample.value is None else floatToGoString(  # type: ignore[no-untyped-call]
                    sample.value)
                out.append(f"{name}{label_text} {value}{timestamp}\n")
        out.append("# EOF\n")
        # Only what this render used is kept: the caches follow the series, never grow.
        self._heads, self._names, self._labels = heads, names, labels
        return "".join(out).encode("utf-8")


def _head(name: str, documentation: str, kind: str, unit: str) -> str:
    escaped = openmetrics.escape_metric_name(name)
    help_text = openmetrics._escape(documentation, openmetrics.ALLOWUTF8,
                                    openmetrics._is_legacy_labelname_rune)
    head = f"# HELP {escaped} {help_text}\n# TYPE {escaped} {kind}\n"
    return head + (f"# UNIT {escaped} {unit}\n" if unit else "")


def _sample_name(name: str) -> str:
    return openmetrics._escape(name, openmetrics.UNDERSCORES,
                               openmetrics._is_legacy_labelname_rune)


def _label_text(items: tuple[tuple[str, str], ...]) -> str:
    if not items:
        return ""
    return "{" + ",".join(
        '{}="{}"'.format(openmetrics.escape_label_name(k), openmetrics._escape(
            v, openmetrics.ALLOWUTF8, openmetrics._is_legacy_labelname_rune))
        for k, v in sorted(items)) + "}"


class Exposition:
    def __init__(self, families: Callable[[], list[Metric]], *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._families = families
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._generation = 0
        self._cache: dict[tuple[bool, bool], tuple[int, Body]] = {}
        self._last_asked: dict[tuple[bool, bool], float] = {}
        self._openmetrics = OpenMetricsRenderer()

    def _render(self, families: list[Metric], openmetrics_format: bool, gzipped: bool) -> Body:
        if openmetrics_format:
            data, content_type = self._openmetrics.render(families), OPENMETRICS_TYPE
        else:
            data, content_type = exposition.generate_latest(_Families(families)), TEXT_TYPE
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
