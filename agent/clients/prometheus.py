"""PromQL queries over Prometheus' HTTP API (``prometheus.url``), for hygiene evidence:
instant vectors, and the raw samples of a range selector (a matrix) where the evidence must
show every sample (how complete a series is, not only its aggregate).

Every failure (unreachable, timeout, HTTP error, a query Prometheus rejects, an unexpected
answer) is :class:`ScanFailed` naming the server and the query, so a job whose evidence is
unavailable acts on nothing and says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from agent.controller.hygiene.model import ScanFailed


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


class PromQL:
    def __init__(self, url: str, *, timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._session = session or requests.Session()

    @property
    def url(self) -> str:
        return self._url

    def instant(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """An instant vector query (at ``at``, unix seconds, else now)."""
        samples = []
        for item in self._query(expr, at=at, result_type="vector"):
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ScanFailed(f"Prometheus at {self._url} answered a malformed sample "
                                 f"(query: {_short(expr)})") from exc
            if math.isnan(value):
                continue
            samples.append(Sample(labels=dict(item.get("metric") or {}), value=value))
        return samples

    def samples(self, expr: str, *, at: float) -> list[Series]:
        """The raw samples of a range selector (``metric{...}[2h]``) evaluated at ``at``:
        exactly what was scraped, gaps included (no lookback fills them)."""
        out = []
        for item in self._query(expr, at=at, result_type="matrix"):
            try:
                points = tuple(sorted((float(t), float(v)) for t, v in item["values"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ScanFailed(f"Prometheus at {self._url} answered a malformed series "
                                 f"(query: {_short(expr)})") from exc
            out.append(Series(labels=dict(item.get("metric") or {}), points=points))
        return out

    def _query(self, expr: str, *, at: float | None, result_type: str) -> list[Any]:
        data: dict[str, str] = {"query": expr}
        if at is not None:
            data["time"] = f"{at:.3f}"
        where = f"Prometheus at {self._url}"
        try:
            # POST: long label matchers do not hit URL length limits of proxies.
            response = self._session.post(f"{self._url}/api/v1/query", data=data,
                                          timeout=self._timeout)
        except requests.Timeout as exc:
            raise ScanFailed(f"{where} did not answer within {self._timeout:g}s "
                             f"(query: {_short(expr)})") from exc
        except requests.RequestException as exc:
            raise ScanFailed(f"{where} is unreachable: {type(exc).__name__}") from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ScanFailed(f"{where} answered HTTP {response.status_code} without a JSON "
                             f"body (query: {_short(expr)})")
        if response.status_code != 200 or body.get("status") != "success":
            error = body.get("error") or f"HTTP {response.status_code}"
            raise ScanFailed(f"{where} rejected the query: {error} (query: {_short(expr)})")
        result = body.get("data") or {}
        if result.get("resultType") != result_type:
            article = "an" if result_type[0] in "aeiou" else "a"
            raise ScanFailed(f"{where} answered a {result.get('resultType')!r}, not "
                             f"{article} {result_type} (query: {_short(expr)})")
        items = result.get("result") or []
        if not isinstance(items, list):
            raise ScanFailed(f"{where} answered a malformed result (query: {_short(expr)})")
        return items
