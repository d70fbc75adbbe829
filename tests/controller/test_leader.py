"""Leader election on a coordination.k8s.io/v1 Lease, against the API stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from agent.controller.leader import LeaderElector
from agent.sim.kube_api import KubeApiServer
from tests.support.net import wait_until

DURATION, DEADLINE, RETRY = 2.0, 1.0, 0.2


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def coordination(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


def elector(api: client.CoordinationV1Api, identity: str, **kwargs: object) -> LeaderElector:
    return LeaderElector(api, name="steward-controller", namespace="steward",
                         identity=identity, lease_duration=DURATION, renew_deadline=DEADLINE,
                         retry_period=RETRY, **kwargs)  # type: ignore[arg-type]


def test_first_replica_creates_the_lease_second_waits(coordination: client.CoordinationV1Api,
                                                      kube: KubeApiServer) -> None:
    a, b = elector(coordination, "a"), elector(coordination, "b")
    a.run_once()
    b.run_once()
    assert (a.is_leader, b.is_leader) == (True, False)
    lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"
    a.run_once()  # renewing keeps it
    b.run_once()
    assert (a.is_leader, b.is_leader) == (True, False)


def test_takeover_only_after_expiry_by_the_followers_own_clock(
        coordination: client.CoordinationV1Api, kube: KubeApiServer) -> None:
    clock = FakeMonotonic()
    a = elector(coordination, "a")
    b = elector(coordination, "b", monotonic=clock)
    a.run_once()
    b.run_once()  # observes a's record at t=1000
    clock.now += DURATION - 0.01
    b.run_once()
    assert not b.is_leader  # a stopped renewing, but the lease is not expired yet
    clock.now += 0.02
    b.run_once()
    assert b.is_leader
    lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


def test_a_renewing_leader_is_never_taken_over(coordination: client.CoordinationV1Api) -> None:
    clock = FakeMonotonic()
    a = elector(coordination, "a")
    b = elector(coordination, "b", monotonic=clock)
    for _ in range(10):
        a.run_once()  # each renewal changes the record, resetting b's observation
        b.run_once()
        clock.now += DURATION * 0.9
    assert (a.is_leader, b.is_leader) == (True, False)


def test_stale_resource_version_gets_409_and_does_not_lead(
        coordination: client.CoordinationV1Api, kube: KubeApiServer) -> None:
    a = elector(coordination, "a")
    a.run_once()
    a.stop(release=True)  # holder "" now: anyone may take it
    b, c = elector(coordination, "b"), elector(coordination, "c")
    # Both read the same version; only the first write can win.
    stale = coordination.read_namespaced_lease("steward-controller", "steward")
    assert b.try_acquire_or_renew()
    stale.spec.holder_identity = "c"
    with pytest.raises(client.exceptions.ApiException) as info:
        coordination.replace_namespaced_lease("steward-controller", "steward", stale)
    assert info.value.status == 409
    assert not c.try_acquire_or_renew()
    lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "b"


def test_leader_that_cannot_renew_stops_before_anyone_else_can_lead(
        coordination: client.CoordinationV1Api, kube: KubeApiServer) -> None:
    clock = FakeMonotonic()
    stopped: list[str] = []
    a = elector(coordination, "a", monotonic=clock, on_stopped_leading=lambda: stopped.append("a"))
    a.run_once()
    assert a.is_leader
    kube.inject_fault(path_regex="/leases/", status=500, times=None)
    clock.now += DEADLINE - 0.1
    a.run_once()
    assert a.is_leader and not stopped
    clock.now += 0.2
    a.run_once()
    assert not a.is_leader and stopped == ["a"]
    kube.clear_faults()


def test_release_on_shutdown_hands_over_at_once(coordination: client.CoordinationV1Api) -> None:
    started: list[str] = []
    a = elector(coordination, "a")
    b = elector(coordination, "b", on_started_leading=lambda: started.append("b"))
    a.run_once()
    b.run_once()
    a.stop(release=True)
    b.run_once()  # no waiting for expiry: the holder is empty
    assert b.is_leader and started == ["b"]


@pytest.fixture
def running() -> Iterator[list[LeaderElector]]:
    electors: list[LeaderElector] = []
    yield electors
    for e in electors:
        e.stop(release=False)


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_threads_elect_exactly_one_and_fail_over_within_the_lease(
        coordination: client.CoordinationV1Api, running: list[LeaderElector]) -> None:
    running.extend(elector(coordination, name) for name in ("a", "b", "c"))
    for e in running:
        e.start()
    wait_until(lambda: sum(e.is_leader for e in running) == 1, timeout=5, what="one leader")
    time.sleep(RETRY * 3)  # several rounds later, still exactly one
    assert sum(e.is_leader for e in running) == 1
    leader = next(e for e in running if e.is_leader)
    leader.stop(release=False)  # dies without releasing: others wait for expiry
    killed = time.monotonic()
    running.remove(leader)
    wait_until(lambda: sum(e.is_leader for e in running) == 1, timeout=DURATION + 2,
               what="a new leader")
    # Expiry is counted from the last observed renewal, at most one retry period before.
    assert time.monotonic() - killed <= DURATION + 2 * RETRY + 0.5


def test_a_whole_second_is_still_a_valid_micro_time(coordination: client.CoordinationV1Api,
                                                    kube: KubeApiServer) -> None:
    """One write in a million lands on microsecond 0, where isoformat() drops the fraction
    and the API server refuses the MicroTime (400): create, renew and release must not."""
    from datetime import UTC, datetime

    whole = datetime(2026, 11, 22, 12, 0, 0, 0, tzinfo=UTC)
    a = elector(coordination, "a", wall_clock=lambda: whole)
    a.run_once()  # create
    a.run_once()  # renew
    assert a.is_leader
    lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert lease is not None
    assert lease["spec"]["renewTime"] == lease["spec"]["acquireTime"] == \
        "2026-11-22T12:00:00.000000Z"
    a.stop()  # release writes the lease back
    released = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert released is not None and released["spec"]["holderIdentity"] in ("", None)
    # What the client did before: the same time as a datetime, rejected as a real server does.
    with pytest.raises(client.ApiException) as refused:
        coordination.create_namespaced_lease("steward", client.V1Lease(
            metadata=client.V1ObjectMeta(name="iso"),
            spec=client.V1LeaseSpec(holder_identity="x", renew_time=whole)))
    assert refused.value.status == 400


@pytest.mark.parametrize(("status", "level", "message"), [
    (409, "INFO", "lease creation lost the race"),
    (403, "WARNING", "cannot create the leader lease"),
    (422, "WARNING", "cannot create the leader lease"),
])
def test_lease_create_failures_are_logged_by_cause(
        coordination: client.CoordinationV1Api, kube: KubeApiServer,
        caplog: pytest.LogCaptureFixture, status: int, level: str, message: str) -> None:
    kube.inject_fault(path_regex=r"/leases$", method="POST", status=status, times=1)
    a = elector(coordination, "a")
    with caplog.at_level("INFO", logger="agent.controller.leader"):
        a.run_once()
    assert not a.is_leader
    (record,) = [r for r in caplog.records if "lease" in r.getMessage()]
    assert (record.levelname, record.getMessage()) == (level, message)
    assert record.__dict__["status"] == status
