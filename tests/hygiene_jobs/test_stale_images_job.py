"""StaleImagesJob end to end: real registry / moto ECR, references from the API stand-in."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from kubernetes import client

from agent.config import StewardConfig
from agent.controller.hygiene.context import JobContext, JobUnavailable
from agent.controller.hygiene.images.ecr import EcrRegistry
from agent.controller.hygiene.images.job import (
    StaleImagesJob,
    build,
    parse_image_resource,
    reclaimable_by_repository,
)
from agent.controller.hygiene.images.oci import OciRegistry
from agent.controller.hygiene.images.policy import ImagePolicy
from agent.controller.hygiene.model import ScanFailed
from agent.controller.hygiene.references import ClusterReferences
from agent.sim.kube_api import KubeApiServer
from agent.sim.moto import ACCOUNT, ECR_HOST, Moto
from tests.hygiene_jobs import cluster
from tests.hygiene_jobs.conftest import NOW
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

POLICY = ImagePolicy(min_age=timedelta(days=30), unused_for=timedelta(days=30), keep_newest=2,
                     protected_tags=(re.compile("latest"), re.compile(r"v?\d+\.\d+\.\d+")))


def test_parse_image_resource() -> None:
    assert parse_image_resource(f"127.0.0.1:5000/ml/train@sha256:{'a' * 64}") == (
        "127.0.0.1:5000", "ml/train", f"sha256:{'a' * 64}")
    with pytest.raises(ValueError):
        parse_image_resource("ml/train:v1")


def test_oci_scan_act_restore_recheck(registry: Registry, kube: KubeApiServer,
                                      api_client: client.ApiClient) -> None:
    old = NOW - timedelta(days=100)
    stale = registry.push_image("ml/train", tag="exp-1", created=old, layers=[b"x" * 400])
    release = registry.push_image("ml/train", tag="v1.0.0", created=old, layers=[b"r"])
    pinned = registry.push_image("ml/train", tag="pinned", created=old, layers=[b"p"])
    amd = registry.push_image("ml/train", tag=None, created=old, layers=[b"a" * 30])
    arm = registry.push_image("ml/train", tag=None, created=old, arch="arm64",
                              layers=[b"b" * 20])
    index = registry.push_index("ml/train", tag="old-multi", children=[amd, arm])
    newest = [registry.push_image("ml/train", tag=f"main-{i}", created=NOW - timedelta(days=i),
                                  layers=[bytes([i])]) for i in (40, 41)]
    kube.create(cluster.workload("Deployment", "serve", f"{registry.host}/ml/train:pinned"))
    oci = OciRegistry(registry.url)
    job = StaleImagesJob([oci], ClusterReferences(api_client), policy=POLICY, clock=lambda: NOW)

    scan = job.scan()

    res = {p.digest: f"{registry.host}/ml/train@{p.digest}"
           for p in (stale, release, pinned, index, *newest)}
    assert {c.resource: c.action for c in scan.candidates} == {
        res[stale.digest]: "delete", res[index.digest]: "delete"}
    assert {s.resource: s.reason for s in scan.skipped} == {
        res[release.digest]: "protected tag v1.0.0",
        res[pinned.digest]: "referenced by ml/Deployment/serve (tag pinned)",
        res[newest[0].digest]: "among newest 2", res[newest[1].digest]: "among newest 2"}
    by_resource = {c.resource: c for c in scan.candidates}
    multi = by_resource[res[index.digest]]
    assert sorted(multi.evidence["children"]) == sorted([amd.digest, arm.digest])
    assert multi.reclaim == {"bytes": float(amd.content_bytes + arm.content_bytes)}
    assert multi.evidence["age_basis"] == "created"
    assert multi.evidence["repository_reclaimable_bytes"] == \
        stale.content_bytes + index.content_bytes
    assert by_resource[res[stale.digest]].reclaim == {"bytes": float(stale.content_bytes)}
    assert reclaimable_by_repository(scan.candidates) == job.reclaimable_by_repository == {
        f"{registry.host}/ml/train": stale.content_bytes + index.content_bytes}

    # Marks live in the engine's store: nothing changes in the registry.
    tags_before = registry.tags("ml/train")
    job.mark(multi, deadline="2026-11-23T12:00:00Z", run_id="r1")
    job.unmark(multi.resource)
    assert registry.tags("ml/train") == tags_before

    record = job.restore_record(multi)
    assert [m["digest"] for m in record["manifests"]][-1] == index.digest  # children first
    assert job.observe(multi, record).state == "not_done"
    job.act(multi)
    job.act(multi)  # idempotent
    for pushed in (index, amd, arm):
        assert not registry.exists("ml/train", pushed.digest)
    assert "old-multi" not in registry.tags("ml/train")
    assert job.observe(multi, record).state == "done"

    back = job.restore(record, restore_id="r1")
    assert back == f"{multi.resource} pushed back (3 manifests, old-multi)"
    assert registry.exists("ml/train", "old-multi")
    for pushed in (amd, arm):
        assert registry.exists("ml/train", pushed.digest)

    # Recheck at the deadline: deployed since the mark, so no longer a candidate.
    assert job.recheck(res[stale.digest]) is not None
    kube.create(cluster.cronjob("nightly", f"other.example/ml/train@{stale.digest}"))
    assert job.recheck(res[stale.digest]) is None


def test_ecr_owner_and_exempt_repositories(aws: Moto, api_client: client.ApiClient) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="vision/detect",
                          tags=[{"Key": "team", "Value": "vision"}])
    ecr.create_repository(repositoryName="frozen",
                          tags=[{"Key": "steward.io/exempt", "Value": "true"}])
    old = NOW - timedelta(days=200)
    stale = aws.push_ecr_image(ecr, "vision/detect", tag="exp", size=700, pushed=old,
                               pulled=old)
    frozen = aws.push_ecr_image(ecr, "frozen", tag="exp", pushed=old)
    policy = ImagePolicy(min_age=POLICY.min_age, unused_for=POLICY.unused_for, keep_newest=0,
                         protected_tags=())
    job = StaleImagesJob([EcrRegistry(ecr, registry_id=ACCOUNT)],
                         ClusterReferences(api_client), policy=policy, clock=lambda: NOW)

    scan = job.scan()

    (candidate,) = scan.candidates
    assert candidate.resource == f"{ACCOUNT}/vision/detect@{stale.digest}"
    assert candidate.owner == "vision"
    assert candidate.reclaim == {"bytes": 700.0}
    assert candidate.evidence["last_pulled_at"] == "2026-05-06T12:00:00Z"
    assert candidate.evidence["pushed_at"] == "2026-05-06T12:00:00Z"
    assert [(s.resource, s.reason) for s in scan.skipped] == [
        (f"{ACCOUNT}/frozen@{frozen.digest}", "exempt repository (tag steward.io/exempt=true)")]

    assert job.recheck(candidate.resource) == candidate
    record = job.restore_record(candidate)
    job.act(candidate)
    assert ecr.describe_images(repositoryName="vision/detect")["imageDetails"] == []
    job.act(candidate)
    assert job.observe(candidate, record).state == "done"
    job.restore(record, restore_id="r1")
    (back,) = ecr.describe_images(repositoryName="vision/detect")["imageDetails"]
    assert (back["imageDigest"], back["imageTags"]) == (stale.digest, ["exp"])

    # A restore cannot bring the push time back: the image is new again, so it is kept.
    assert job.recheck(candidate.resource) is None

    ecr.create_repository(repositoryName="short-lived")
    doomed = aws.push_ecr_image(ecr, "short-lived", tag="x", pushed=old)
    resource = f"{ACCOUNT}/short-lived@{doomed.digest}"
    assert job.recheck(resource) is not None
    ecr.delete_repository(repositoryName="short-lived", force=True)
    assert job.recheck(resource) is None  # gone with its repository


def test_nothing_is_decided_when_a_source_is_down(registry: Registry, kube: KubeApiServer,
                                                  api_client: client.ApiClient) -> None:
    registry.push_image("ml/train", tag="exp", created=NOW - timedelta(days=100))
    job = StaleImagesJob([OciRegistry(registry.url)], ClusterReferences(api_client),
                         policy=POLICY, clock=lambda: NOW)
    kube.inject_fault(path_regex=r"/pods$", status=503, times=None)
    with pytest.raises(ScanFailed, match="cluster references"):
        job.scan()
    kube.clear_faults()
    registry.stop()
    with pytest.raises(ScanFailed, match="registry"):
        job.scan()


def test_from_config_and_build(aws: Moto, registry: Registry, api_client: client.ApiClient,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = StewardConfig.model_validate({
        "aws": {"endpoint_url": aws.url, "region": "us-east-1"},
        "registries": [
            {"type": "ecr", "url": ECR_HOST, "repositories": ["ml/*"]},
            {"type": "oci", "url": registry.url,
             "auth": {"username": "ci", "password_env": "REGISTRY_PASSWORD"}},
        ],
        "hygiene": {"stale_images": {"keep_newest": 0, "min_age_days": 1}},
    })
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="ml/a")
    aws.push_ecr_image(ecr, "ml/a", tag="t", pushed=NOW - timedelta(days=5))
    registry.push_image("r", tag="t", created=NOW - timedelta(days=5))

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("REGISTRY_PASSWORD", "from-env")
    job = StaleImagesJob.from_config(config, references=ClusterReferences(api_client),
                                     clock=lambda: NOW)
    assert sorted(c.resource.split("@")[0] for c in job.scan().candidates) == [
        f"{ACCOUNT}/ml/a", f"{registry.host}/r"]

    built = build(JobContext(config=config, api_client=api_client,
                             clock=lambda: NOW.timestamp()))
    assert built.name == "stale-images" and built.unit == "bytes"
    assert len(built.scan().candidates) == 2
    with pytest.raises(JobUnavailable):
        build(JobContext(config=config, api_client=None))
    # A restore needs only the registry: built without a cluster, and it decides nothing.
    for_restore = build(JobContext(config=config, api_client=None, for_restore=True))
    with pytest.raises(ScanFailed, match="a restore reads no cluster references"):
        for_restore.scan()
