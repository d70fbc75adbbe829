"""Alertmanager webhook v4 payloads as Alertmanager 0.25 sends them, for the notifier's tests."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
EXTERNAL_URL = "http://alertmanager.example:9093"
T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def alert(name: str = "GpuLost", *, status: str = "firing", severity: str = "critical",
          starts_at: datetime = T0, ends_at: datetime | None = None,
          summary: str | None = None, description: str = "", **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, "severity": severity, **labels}
    if status == "resolved" and ends_at is None:
        ends_at = starts_at + timedelta(minutes=5)
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": summary or f"{name} summary.",
                        "description": description or f"{name} on {labels}"},
        "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
        "endsAt": ends_at.isoformat().replace("+00:00", "Z") if ends_at else ZERO_TIME,
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
        "fingerprint": fingerprint(all_labels),
    }


def webhook(alerts: list[dict[str, Any]], *, group_key: str = '{}:{hostname="gpu-node-1"}',
            group_labels: dict[str, str] | None = None, status: str | None = None,
            truncated: int = 0) -> dict[str, Any]:
    if status is None:
        status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common = {k: v for k, v in alerts[0]["labels"].items()
              if all(a["labels"].get(k) == v for a in alerts)} if alerts else {}
    return {
        "receiver": "steward", "status": status, "alerts": alerts,
        "groupLabels": group_labels if group_labels is not None else {"hostname": "gpu-node-1"},
        "commonLabels": common, "commonAnnotations": {}, "externalURL": EXTERNAL_URL,
        "version": "4", "groupKey": group_key, "truncatedAlerts": truncated,
    }


def post(url: str, body: bytes | dict[str, Any], *, token: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/alertmanager", data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return int(exc.code), json.loads(raw)
        except ValueError:
            return int(exc.code), raw
