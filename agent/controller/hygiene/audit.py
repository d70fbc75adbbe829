"""Announcing each hygiene action outside the state store: a JSON log line, the
``steward_hygiene_actions_total`` counter and, for Kubernetes objects, an Event on the object.

The state store is the record; these are best effort. An Event's name derives from the
step's idempotency key, so the rerun of a crashed step cannot post it twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from agent.controller.hygiene.metrics import HygieneMetrics

log = logging.getLogger(__name__)

COMPONENT: Final = "steward-hygiene"
_EVENT_REASONS: Final = {
    "mark": "HygieneMarked", "unmark": "HygieneUnmarked", "notify": "HygieneOwnerNotified",
    "scale_to_zero": "HygieneScaledToZero", "delete": "HygieneDeleted",
    "expire_objects": "HygieneExpiringObjects", "restore": "HygieneRestored",
    "release": "HygieneActionReleased", "vanished": "HygieneActionVanished",
}
_WARNING_ACTIONS: Final = frozenset({"scale_to_zero", "delete", "expire_objects", "mark"})


class EventRecorder:
    """Kubernetes Events (core/v1) on the objects hygiene touches."""

    def __init__(self, api_client: Any, *, instance: str) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._instance = instance

    def record(self, kube_object: tuple[str, str, str, str], *, action: str, message: str,
               key: str) -> None:
        from kubernetes.client.exceptions import ApiException

        api_version, kind, namespace, name = kube_object
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"steward-hygiene.{digest}", "namespace": namespace},
            "involvedObject": {"apiVersion": api_version, "kind": kind, "namespace": namespace,
                               "name": name},
            "reason": _EVENT_REASONS.get(action, "HygieneAction"),
            "message": message[:1024],
            "type": "Warning" if action in _WARNING_ACTIONS else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self._instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._core.create_namespaced_event(namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:  # 409: this step's Event exists (a rerun after a crash)
                log.warning("cannot record a Kubernetes Event", extra={
                    "object": f"{namespace}/{kind}/{name}", "status": exc.status})
        except Exception as exc:  # the API is down: the store and the log still have it
            log.warning("cannot record a Kubernetes Event", extra={
                "object": f"{namespace}/{kind}/{name}", "detail": str(exc)})


class AuditTrail:
    def __init__(self, metrics: HygieneMetrics, *, events: EventRecorder | None) -> None:
        self._metrics = metrics
        self._events = events

    def action(self, *, job: str, action: str, mode: str, resource: str, run_id: str | None,
               key: str | None, message: str, status: str = "done",
               kube_object: tuple[str, str, str, str] | None = None,
               detail: Mapping[str, Any] | None = None) -> None:
        """One action: log line always; metric and Event only for what happened."""
        log.info("hygiene action", extra={
            "hygiene_job": job, "action": action, "mode": mode, "resource": resource,
            "run_id": run_id, "status": status, "key": key, "detail": dict(detail or {}),
            "why": message})
        if status != "done":
            return
        self._metrics.action(job, action, mode)
        if mode == "apply" and kube_object is not None and self._events is not None \
                and key is not None:
            self._events.record(kube_object, action=action, message=message, key=key)
