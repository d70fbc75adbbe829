"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

Expiry is judged by this process's own monotonic clock since it last saw the lease record
change, never by comparing the holder's ``renewTime`` with local wall time, so clock skew
between nodes cannot make two replicas lead. Updates carry the resourceVersion that was
read: a stale write gets 409 Conflict and this replica simply does not lead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.clients.kubernetes.api import micro_time
from agent.clients.kubernetes.calls import LeaseCalls

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(self, coordination_api: LeaseCalls, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0,
                 on_started_leading: Callable[[], None] = lambda: None,
                 on_stopped_leading: Callable[[], None] = lambda: None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self._api = coordination_api
        self._name, self._namespace, self.identity = name, namespace, identity
        self._duration, self._renew_deadline, self._retry = (
            lease_duration, renew_deadline, retry_period)
        self._on_started, self._on_stopped = on_started_leading, on_stopped_leading
        self._monotonic, self._wall = monotonic, wall_clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading

    # -- one attempt -----------------------------------------------------------------

    def _lease_body(self, *, acquire_time: datetime | None, transitions: int,
                    resource_version: str | None) -> Any:
        from kubernetes import client

        now = self._wall()
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace,
                                         resource_version=resource_version),
            spec=client.V1LeaseSpec(
                # The API field is whole seconds: round up, never promise less than we keep.
                holder_identity=self.identity,
                lease_duration_seconds=math.ceil(self._duration),
                # MicroTime text, never a datetime: the client would send isoformat(), which
                # has no fraction when the microsecond is 0, and the server refuses that.
                acquire_time=micro_time(acquire_time or now), renew_time=micro_time(now),
                lease_transitions=transitions))

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the lease afterwards."""
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._api.read_namespaced_lease(self._name, self._namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("cannot read the leader lease", extra={"status": exc.status})
                return False
            try:
                self._api.create_namespaced_lease(self._namespace, self._lease_body(
                    acquire_time=None, transitions=0, resource_version=None))
            except ApiException as create_exc:
                if create_exc.status == 409:  # another replica created it first
                    log.info("lease creation lost the race", extra={"status": 409})
                else:  # 403 (RBAC), 400/422 (a body the server refuses): not a race
                    log.warning("cannot create the leader lease", extra={
                        "status": create_exc.status, "reason": create_exc.reason,
                        "detail": _message(create_exc)})
                return False
            self._observed, self._observed_at = None, self._monotonic()
            return True

        spec = lease.spec
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        now = self._monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.holder_identity or ""
        duration = float(spec.lease_duration_seconds or self._duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # someone else holds a lease that has not expired by our clock
        ours = holder == self.identity
        body = self._lease_body(
            acquire_time=spec.acquire_time if ours else None,
            transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
            resource_version=lease.metadata.resource_version)
        try:
            self._api.replace_namespaced_lease(self._name, self._namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                log.warning("cannot update the leader lease", extra={
                    "status": exc.status, "reason": exc.reason, "detail": _message(exc)})
            return False
        return True

    # -- the loop --------------------------------------------------------------------

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info("became leader" if leading else "stopped leading",
                 extra={"identity": self.identity, "lease": f"{self._namespace}/{self._name}"})
        (self._on_started if leading else self._on_stopped)()

    def run_once(self) -> None:
        now = self._monotonic()
        try:
            ok = self.try_acquire_or_renew()
        except Exception as exc:  # network errors: treat as a failed round
            log.warning("leader election round failed", extra={"detail": str(exc)})
            ok = False
        if ok:
            self._last_renew = now
            self._set_leading(True)
        elif self._leading and now - self._last_renew >= self._renew_deadline:
            # Could not renew in time: another replica may take over after the lease
            # duration, so stop acting well before that.
            self._set_leading(False)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._retry)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._retry + 5)
        if self._leading:
            self._set_leading(False)
            if release:
                self._release()

    def _release(self) -> None:
        """Hand the lease back so that another replica takes over at once, not after expiry."""
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._api.read_namespaced_lease(self._name, self._namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            # The times read back are datetimes: written back as MicroTime text (see above).
            if lease.spec.acquire_time is not None:
                lease.spec.acquire_time = micro_time(lease.spec.acquire_time)
            lease.spec.renew_time = micro_time(self._wall())
            self._api.replace_namespaced_lease(self._name, self._namespace, lease)
            log.info("released the leader lease", extra={"identity": self.identity})
        except ApiException as exc:
            log.warning("could not release the leader lease", extra={"status": exc.status})


def _message(exc: Any) -> str:
    """The ``message`` of the Status an API error carries, else its raw body (bounded)."""
    import json

    body = getattr(exc, "body", None) or ""
    try:
        return str(json.loads(body).get("message", ""))[:500]
    except (ValueError, AttributeError, TypeError):
        return str(body)[:500]
