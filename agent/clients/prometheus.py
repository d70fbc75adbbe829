"""The Prometheus HTTP API (``prometheus.url``; Thanos and Mimir answer the same API): instant
queries, the raw samples of a range selector, range queries, and the firing alerts.

Every failure (unreachable, timeout, HTTP error, a query Prometheus rejects, an answer of
the wrong shape) is one :class:`PrometheusError`, one line naming the server and the query,
so a hygiene job whose evidence is unavailable acts on nothing and says why, and a command
ends with one ``steward:`` line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import requests

from agent.errors import plain_cause

log = logging.getLogger(__name__)

# Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS: Final = 11_000


class PrometheusError(Exception):
    """Prometheus could not answer a query (a runtime failure: exit code 1)."""


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series' raw samples: (unix seconds, value), oldest first."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


def _short(expr: str, limit: int = 160) -> str:
    flat = " ".join(expr.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class PrometheusClient:
    """One server; thread-safe as ``requests.Session`` is for these plain POSTs.

    ``timeout`` is both what Prometheus is told (its ``timeout`` parameter, after which it
    abandons the query) and how long the client waits for the answer.
    """

    def __init__(self, url: str, *, timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._session = session or requests.Session()

    @property
    def url(self) -> str:
        return self._url

    @property
    def timeout(self) -> float:
        return self._timeout

    def instant(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """An instant vector query (at ``at``, unix seconds, else now); NaN samples dropped."""
        samples: list[Sample] = []
        append, isnan = samples.append, math.isnan
        try:
            for item in self._result(self._post("query", expr, _at(at)), expr, "vector"):
                value = float(item["value"][1])
                if not isnan(value):
                    # The decoded answer is this call's own: its label dicts need no copy.
                    append(Sample(item.get("metric") or {}, value))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self._url} answered a malformed sample "
                                  f"(query: {_short(expr)})") from exc
        return samples

    def samples(self, expr: str, *, at: float) -> list[Series]:
        """The raw samples of a range selector (``metric{...}[2h]``) evaluated at ``at``:
        exactly what was scraped, gaps included (no lookback fills them)."""
        out = []
        try:
            for item in self._result(self._post("query", expr, _at(at)), expr, "matrix"):
                # A list, sorted in place: Prometheus sends them in order, which sort checks
                # in one pass (a generator into sorted() costs half as much again).
                listed = [(float(t), float(v)) for t, v in item["values"]]
                listed.sort()
                out.append(Series(item.get("metric") or {}, tuple(listed)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self._url} answered a malformed series "
                                  f"(query: {_short(expr)})") from exc
        return out

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result as Prometheus sends it, of whatever type it is."""
        return self._result(self._post("query", expr, _at(at)), expr, None)

    def query_range(self, expr: str, *, start: float, end: float,
                    step: int) -> list[dict[str, Any]]:
        """A range query's ``matrix``, as sent (the report turns it into arrays itself)."""
        if (end - start) / step + 1 > MAX_POINTS:
            raise ValueError(f"range query of {(end - start) / step + 1:.0f} points per series "
                             f"exceeds Prometheus' limit of {MAX_POINTS}")
        params = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        return self._result(self._post("query_range", expr, params), expr, "matrix")

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert the rules hold now (pending and firing), with its labels and state."""
        return self._listing("alerts", "alerts")

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health."""
        return self._listing("targets", "activeTargets")

    # -- the wire ----------------------------------------------------------------------

    def _listing(self, endpoint: str, key: str) -> list[dict[str, Any]]:
        body = self._answer(self._send("GET", endpoint, {}), f"the {endpoint}")
        items = (body.get("data") or {}).get(key)
        if not isinstance(items, list):
            raise PrometheusError(f"Prometheus at {self._url} answered malformed {endpoint}")
        return items

    def _post(self, endpoint: str, expr: str, params: dict[str, str]) -> dict[str, Any]:
        data = {"query": expr, "timeout": f"{self._timeout:g}s", **params}
        return self._answer(self._send("POST", endpoint, data, expr=expr),
                            f"query: {_short(expr)}")

    def _send(self, method: str, endpoint: str, data: dict[str, str], *,
              expr: str | None = None) -> requests.Response:
        where = f"Prometheus at {self._url}"
        what = f" (query: {_short(expr)})" if expr is not None else ""
        try:
            # POST: long label matchers do not hit URL length limits of proxies.
            return self._session.request(method, f"{self._url}/api/v1/{endpoint}",
                                         data=data or None, timeout=self._timeout)
        except requests.Timeout as exc:
            raise PrometheusError(f"{where} did not answer within {self._timeout:g}s"
                                  f"{what}") from exc
        except requests.RequestException as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self._url}: "
                                  f"{plain_cause(exc)}") from exc

    def _answer(self, response: requests.Response, what: str) -> dict[str, Any]:
        where = f"Prometheus at {self._url}"
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PrometheusError(f"{where} answered HTTP {response.status_code} without a "
                                  f"JSON body ({what})")
        if response.status_code != 200 or body.get("status") != "success":
            error = body.get("error") or f"HTTP {response.status_code}"
            raise PrometheusError(f"{where} rejected the query: {error} ({what})")
        for warning in body.get("warnings") or []:
            # Thanos and Mimir answer partial data with a warning; the numbers may be low.
            log.warning("Prometheus warning: %s", warning, extra={"query": what[:120]})
        return body

    def _result(self, body: dict[str, Any], expr: str,
                result_type: str | None) -> list[dict[str, Any]]:
        where = f"Prometheus at {self._url}"
        result = body.get("data") or {}
        if result_type is not None and result.get("resultType") != result_type:
            article = "an" if result_type[0] in "aeiou" else "a"
            raise PrometheusError(f"{where} answered a {result.get('resultType')!r}, not "
                                  f"{article} {result_type} (query: {_short(expr)})")
        items = result.get("result") or []
        if not isinstance(items, list):
            raise PrometheusError(f"{where} answered a malformed result "
                                  f"(query: {_short(expr)})")
        return items


def _at(at: float | None) -> dict[str, str]:
    return {} if at is None else {"time": f"{at:.3f}"}
