"""The Alertmanager adapter (API v2): silences created, listed and expired, and the alerts it
holds now. Used by the notifier's Acknowledge buttons and its forgotten-silences digest.

Every failure is one :class:`AlertmanagerError` whose message names the server and what to
check; the caller decides whether to retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import requests

from agent.errors import plain_cause

_API: Final = "/api/v2"


class AlertmanagerError(Exception):
    pass


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[tuple[str, str, bool, bool], ...]  # (name, value, is_regex, is_equal)
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    state: str  # active, pending, expired

    def exact_labels(self) -> dict[str, str]:
        """The equality matchers as labels (what an Acknowledge silence is made of)."""
        return {name: value for name, value, regex, equal in self.matchers
                if not regex and equal}


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _silence(item: Mapping[str, Any]) -> Silence:
    try:
        return Silence(
            id=str(item["id"]),
            matchers=tuple((str(m["name"]), str(m["value"]), bool(m.get("isRegex", False)),
                            bool(m.get("isEqual", True))) for m in item["matchers"]),
            starts_at=_parse_time(item["startsAt"]), ends_at=_parse_time(item["endsAt"]),
            created_by=str(item.get("createdBy", "")), comment=str(item.get("comment", "")),
            state=str((item.get("status") or {}).get("state", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise AlertmanagerError(f"Alertmanager answered a malformed silence: {exc}") from exc


class AlertmanagerClient:
    def __init__(self, url: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._session = session or requests.Session()

    @property
    def url(self) -> str:
        return self._url

    def _call(self, method: str, path: str, *, body: Any = None,
              params: Mapping[str, Any] | None = None) -> requests.Response:
        try:
            return self._session.request(method, f"{self._url}{_API}{path}", json=body,
                                         params=params, timeout=self._timeout)
        except requests.Timeout as exc:
            raise AlertmanagerError(f"Alertmanager at {self._url} did not answer within "
                                    f"{self._timeout:g}s") from exc
        except requests.RequestException as exc:
            raise AlertmanagerError(f"cannot reach Alertmanager at {self._url}: "
                                    f"{plain_cause(exc)}") from exc

    def _json(self, response: requests.Response, what: str) -> Any:
        if response.status_code != 200:
            raise AlertmanagerError(f"Alertmanager at {self._url} refused {what}: HTTP "
                                    f"{response.status_code} {response.text[:200].strip()}")
        try:
            return response.json()
        except ValueError as exc:
            raise AlertmanagerError(f"Alertmanager at {self._url} answered {what} without "
                                    "JSON") from exc

    def create_silence(self, labels: Mapping[str, str], *, starts_at: datetime,
                       ends_at: datetime, created_by: str, comment: str) -> str:
        """A silence with one exact (equality, not regex) matcher per label; its id."""
        if not labels:
            raise ValueError("a silence needs at least one matcher")
        body = {"matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True}
                             for k, v in sorted(labels.items())],
                "startsAt": _time(starts_at), "endsAt": _time(ends_at),
                "createdBy": created_by, "comment": comment}
        answer = self._json(self._call("POST", "/silences", body=body), "a new silence")
        silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
        if not isinstance(silence_id, str) or not silence_id:
            raise AlertmanagerError(f"Alertmanager at {self._url} created a silence without "
                                    "telling its id")
        return silence_id

    def silence(self, silence_id: str) -> Silence | None:
        response = self._call("GET", f"/silence/{quote(silence_id, safe='')}")
        if response.status_code == 404:
            return None
        return _silence(self._json(response, f"silence {silence_id}"))

    def silences(self) -> list[Silence]:
        answer = self._json(self._call("GET", "/silences"), "the silences")
        if not isinstance(answer, list):
            raise AlertmanagerError(f"Alertmanager at {self._url} answered malformed silences")
        return [_silence(item) for item in answer]

    def expire_silence(self, silence_id: str) -> bool:
        """Expire it; False when it was already expired or is unknown (nothing to do)."""
        response = self._call("DELETE",
                              f"/silence/{quote(silence_id, safe='')}")
        if response.status_code == 200:
            return True
        current = self.silence(silence_id)
        if current is None or current.state == "expired":
            return False
        raise AlertmanagerError(f"Alertmanager at {self._url} refused to expire silence "
                                f"{silence_id}: HTTP {response.status_code} "
                                f"{response.text[:200].strip()}")

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert it holds now, silenced and inhibited ones included."""
        answer = self._json(self._call("GET", "/alerts", params={
            "active": "true", "silenced": "true", "inhibited": "true",
            "unprocessed": "true"}), "the alerts")
        if not isinstance(answer, list):
            raise AlertmanagerError(f"Alertmanager at {self._url} answered malformed alerts")
        return [item for item in answer if isinstance(item, dict)]
