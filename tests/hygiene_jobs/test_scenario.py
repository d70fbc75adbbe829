"""Every guard matters, driven by the real hygiene engine: caps, mark, deadline, recheck, sweep.

Images in moto's ECR, buckets in moto's S3, references from the API stand-in. Nothing that a
guard protects is touched; everything else is marked, then swept at its deadline; a cap that
is too small stops the run before anything is marked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agent.config import OrphanedBucketsConfig, StaleImagesConfig
from agent.controller.hygiene.audit import AuditTrail
from agent.controller.hygiene.buckets.job import OrphanedBucketsJob
from agent.controller.hygiene.buckets.policy import MARK_TAG, BucketPolicy
from agent.controller.hygiene.buckets.s3 import S3Buckets
from agent.controller.hygiene.engine import HygieneEngine
from agent.controller.hygiene.guards import KillSwitch
from agent.controller.hygiene.images.ecr import EcrRegistry
from agent.controller.hygiene.images.job import StaleImagesJob
from agent.controller.hygiene.images.policy import ImagePolicy
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.model import HygieneJob
from agent.controller.hygiene.notify import OwnerNotice
from agent.controller.hygiene.references import ClusterReferences
from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
from agent.controller.hygiene.store import HygieneStore
from agent.sim.kube_api import KubeApiServer
from agent.sim.moto import ACCOUNT, ECR_HOST, Moto
from agent.state import open_store
from tests.hygiene_jobs import cluster
from tests.hygiene_jobs.conftest import NOW

pytestmark = pytest.mark.integration
OLD = NOW - timedelta(days=200)


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def seconds(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class Notices:
    def __init__(self) -> None:
        self.seen: list[OwnerNotice] = []

    def notify(self, notice: OwnerNotice) -> None:
        self.seen.append(notice)


def engine_for(job: HygieneJob, settings: Any, key: str, *, tmp_path: Path, clock: Clock,
               notices: Notices) -> HygieneEngine:
    metrics = HygieneMetrics()
    return HygieneEngine(
        job, settings, store=HygieneStore(open_store(f"sqlite:///{tmp_path / 'state.db'}",
                                                tables=[HYGIENE_TABLES])),
        metrics=metrics, audit=AuditTrail(metrics, events=None), notifier=notices,
        kill_switch=KillSwitch(configured=False, configmap=None, namespace="steward",
                               api_client=None),
        config_key=key, clock=clock.seconds)


def bucket_calls(s3: Any) -> list[tuple[str, str]]:
    """(operation, bucket) of every S3 call from now on."""
    seen: list[tuple[str, str]] = []

    def record(model: Any, params: dict[str, Any], context: Any = None, **_: Any) -> None:
        name = (context or {}).get("input_params", {}).get("Bucket", "")
        seen.append((model.name, name))

    s3.meta.events.register("before-call.s3.*", record)
    return seen


def test_stale_images_every_guard_and_the_cap(aws: Moto, kube: KubeApiServer,
                                              api_client: client.ApiClient,
                                              tmp_path: Path) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="ml/train")

    def push(tag: str | None, seed: str, *, days: float = 200) -> Any:
        return aws.push_ecr_image(ecr, "ml/train", tag=tag, seed=seed, size=1_000,
                                  pushed=NOW - timedelta(days=days))

    cron_image = push("nightly-2026-05", "cron")
    release = push("v1.4.2", "release")
    amd, arm = push(None, "amd64"), push(None, "arm64")
    kept_index = aws.push_ecr_index(ecr, "ml/train", tag="v2.0.0", children=[amd, arm],
                                    pushed=OLD)
    stale = [push(f"exp-{i}", f"stale{i}") for i in range(3)]
    c1, c2 = push(None, "c1"), push(None, "c2")
    stale_index = aws.push_ecr_index(ecr, "ml/train", tag="exp-multi", children=[c1, c2],
                                     pushed=OLD)
    newest = push("main", "newest", days=1)
    kube.create(cluster.cronjob("nightly", f"{ECR_HOST}/ml/train@{cron_image.digest}"))

    clock, notices = Clock(), Notices()
    settings = StaleImagesConfig(keep_newest=1, max_actions=3, max_percent=100, mark_hours=24)
    job = StaleImagesJob([EcrRegistry(ecr, registry_id=ACCOUNT)],
                         ClusterReferences(api_client),
                         policy=ImagePolicy.from_config(settings), clock=clock.datetime)

    def engine(max_actions: int) -> HygieneEngine:
        return engine_for(job, settings.model_copy(update={"max_actions": max_actions}),
                          "hygiene.stale_images", tmp_path=tmp_path, clock=clock,
                          notices=notices)

    def resource(image: Any) -> str:
        return f"{ACCOUNT}/ml/train@{image.digest}"

    def digests() -> set[str]:
        return {d["imageDigest"] for d in ecr.describe_images(
            repositoryName="ml/train")["imageDetails"]}

    everything = digests()
    tripped = engine(3).run(apply=True)
    assert tripped.result == "blast_radius_tripped", tripped.reason
    assert "4 actions planned" in (tripped.reason or "")
    assert digests() == everything and notices.seen == []

    marked = engine(10).run(apply=True)
    assert marked.result == "succeeded", marked.reason
    assert marked.plan is not None
    plan = marked.plan.to_json()
    assert {c["resource"] for c in plan["candidates"]} == {
        resource(i) for i in (*stale, stale_index)}
    assert {s["resource"]: s["reason"] for s in plan["skipped"]} == {
        resource(cron_image): "referenced by ml/CronJob/nightly (digest)",
        resource(release): "protected tag v1.4.2",
        resource(kept_index): "protected tag v2.0.0",
        resource(amd): f"child of kept index {kept_index.digest}",
        resource(arm): f"child of kept index {kept_index.digest}",
        resource(newest): "among newest 1"}
    assert plan["reclaimable"] == {"bytes": 5_000}
    assert digests() == everything  # marked, not acted on
    assert {n.resource for n in notices.seen if n.kind == "marked"} == {
        resource(i) for i in (*stale, stale_index)}

    clock.now += 25 * 3600
    swept = engine(10).run(apply=True)
    assert swept.result == "succeeded", swept.reason
    gone = {i.digest for i in (*stale, stale_index, c1, c2)}
    assert digests() == everything - gone
    assert {a.resource for a in swept.actions if a.action == "delete" and a.status == "done"} \
        == {resource(i) for i in (*stale, stale_index)}


def test_orphaned_buckets_every_guard_and_the_cap(aws: Moto, kube: KubeApiServer,
                                                  api_client: client.ApiClient,
                                                  tmp_path: Path) -> None:
    s3 = aws.client("s3")

    def bucket(name: str, *, tags: dict[str, str] | None = None) -> None:
        s3.create_bucket(Bucket=name)
        if tags:
            s3.put_bucket_tagging(Bucket=name, Tagging={
                "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        aws.set_bucket_created(name, OLD)

    bucket("busy-logs")
    aws.put_objects("busy-logs", (f"log-{i:05d}" for i in range(10_000)), written=OLD)
    aws.set_written("busy-logs", "log-02500", NOW - timedelta(days=1))
    bucket("exempt-archive", tags={"steward.io/exempt": "true"})
    bucket("feature-store", tags={"cost-center": "7"})
    kube.create(cluster.workload("Deployment", "features", "img:1",
                                 env={"FEATURES": "s3://feature-store/v3/"}))
    bucket("orphan-a")
    bucket("orphan-b", tags={"owner": "someone-who-left"})
    bucket("orphan-full")
    aws.put_objects("orphan-full", ("a", "b"), written=OLD)

    clock, notices = Clock(), Notices()
    settings = OrphanedBucketsConfig(teams=["ml"], max_actions=2, max_percent=100,
                                     mark_hours=24)
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client),
                             policy=BucketPolicy.from_config(settings), clock=clock.datetime)

    def engine(max_actions: int) -> HygieneEngine:
        return engine_for(job, settings.model_copy(update={"max_actions": max_actions}),
                          "hygiene.orphaned_buckets", tmp_path=tmp_path, clock=clock,
                          notices=notices)

    def state() -> dict[str, tuple[dict[str, str], int]]:
        out = {}
        for b in s3.list_buckets()["Buckets"]:
            try:
                tags = {t["Key"]: t["Value"]
                        for t in s3.get_bucket_tagging(Bucket=b["Name"])["TagSet"]}
            except s3.exceptions.ClientError:
                tags = {}
            count = len(aws.bucket(b["Name"]).keys)
            out[b["Name"]] = (tags, count)
        return out

    protected = {"busy-logs", "exempt-archive", "feature-store"}
    before = state()
    calls = bucket_calls(s3)
    tripped = engine(2).run(apply=True)
    assert tripped.result == "blast_radius_tripped", tripped.reason
    assert state() == before and notices.seen == []
    # The busy bucket was listed up to its recent object only: 3 pages of its 11.
    assert calls.count(("ListObjectVersions", "busy-logs")) == 3

    marked = engine(10).run(apply=True)
    assert marked.result == "succeeded", marked.reason
    assert marked.plan is not None
    plan = marked.plan.to_json()
    assert {c["resource"]: c["action"] for c in plan["candidates"]} == {
        "s3://orphan-a": "delete", "s3://orphan-b": "delete", "s3://orphan-full": "notify"}
    assert {s["resource"]: s["reason"] for s in plan["skipped"]} == {
        "s3://busy-logs": "object written 2026-11-21",
        "s3://exempt-archive": "exempt tag steward.io/exempt=true",
        "s3://feature-store": "referenced by ml/Deployment/features (env)"}
    after_mark = state()
    for name in ("orphan-a", "orphan-b", "orphan-full"):
        assert after_mark[name][0][MARK_TAG] == "2026-11-23"
    assert after_mark["orphan-b"][0]["owner"] == "someone-who-left"
    assert {n: after_mark[n] for n in protected} == {n: before[n] for n in protected}

    clock.now += 25 * 3600
    swept = engine(10).run(apply=True)
    assert swept.result == "succeeded", swept.reason
    final = state()
    assert set(final) == set(before) - {"orphan-a", "orphan-b"}
    assert {n: final[n] for n in protected} == {n: before[n] for n in protected}
    assert final["orphan-full"][1] == 2  # not empty: its owner is reminded, nothing deleted
    assert any(n.kind == "reminder" and n.resource == "s3://orphan-full" for n in notices.seen)
