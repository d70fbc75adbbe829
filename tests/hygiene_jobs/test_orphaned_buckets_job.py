"""OrphanedBucketsJob end to end against moto over HTTP, with references from the stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client

from agent.config import OrphanedBucketsConfig, StewardConfig
from agent.controller.hygiene.buckets.job import OrphanedBucketsJob, build
from agent.controller.hygiene.buckets.policy import (
    EXPIRE_RULE_ID,
    MARK_TAG,
    REASON_TAG,
    RESTORED_TAG,
    BucketPolicy,
    expiry_rules,
)
from agent.controller.hygiene.buckets.s3 import S3Buckets, S3Error
from agent.controller.hygiene.context import JobContext, JobUnavailable
from agent.controller.hygiene.model import ScanFailed
from agent.controller.hygiene.references import ClusterReferences
from agent.sim.kube_api import KubeApiServer
from agent.sim.moto import Moto, count_calls
from tests.hygiene_jobs import cluster
from tests.hygiene_jobs.conftest import NOW

pytestmark = pytest.mark.integration
OLD = NOW - timedelta(days=400)
LOG_GRANTS = {"GrantWrite": 'uri="http://acs.amazonaws.com/groups/s3/LogDelivery"',
              "GrantReadACP": 'uri="http://acs.amazonaws.com/groups/s3/LogDelivery"'}


def policy(**overrides: Any) -> BucketPolicy:
    settings = {"teams": ["ml", "Platform"], "quiet_days": 90, **overrides}
    return BucketPolicy.from_config(OrphanedBucketsConfig.model_validate(settings))


def make_bucket(aws: Moto, s3: Any, name: str, *, tags: dict[str, str] | None = None,
                objects: int = 0, created: Any = OLD) -> None:
    s3.create_bucket(Bucket=name)
    if tags:
        s3.put_bucket_tagging(Bucket=name, Tagging={
            "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
    if objects:
        aws.put_objects(name, (f"part-{i:04d}" for i in range(objects)), written=OLD)
    aws.set_bucket_created(name, created)


def tags_of(s3: Any, name: str) -> dict[str, str]:
    try:
        return {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]}
    except s3.exceptions.ClientError:
        return {}


@pytest.fixture
def quiet_logs(aws: Moto) -> Iterator[None]:
    with aws.access_logs_off():
        yield


def test_guards_and_actions(aws: Moto, quiet_logs: None, kube: KubeApiServer,
                            api_client: client.ApiClient) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-empty")
    make_bucket(aws, s3, "orphan-full", tags={"owner": "bob"}, objects=3)
    make_bucket(aws, s3, "team-data", tags={"team": "ml"}, objects=2)
    make_bucket(aws, s3, "platform-data", tags={"owner": "platform"})
    make_bucket(aws, s3, "exempt-data", tags={"steward.io/exempt": "true"})
    make_bucket(aws, s3, "fresh-bucket", created=NOW - timedelta(days=2))
    make_bucket(aws, s3, "busy-data", objects=5)
    aws.set_written("busy-data", "part-0003", NOW - timedelta(days=1))
    make_bucket(aws, s3, "env-named")
    make_bucket(aws, s3, "log-target")
    make_bucket(aws, s3, "replica-target")
    s3.put_bucket_acl(Bucket="log-target", **LOG_GRANTS)
    s3.put_bucket_logging(Bucket="team-data", BucketLoggingStatus={
        "LoggingEnabled": {"TargetBucket": "log-target", "TargetPrefix": "logs/"}})
    for name in ("team-data", "replica-target"):
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_replication(Bucket="team-data", ReplicationConfiguration={
        "Role": "arn:aws:iam::123456789012:role/replication",
        "Rules": [{"ID": "all", "Status": "Enabled", "Priority": 1, "Filter": {"Prefix": ""},
                   "DeleteMarkerReplication": {"Status": "Disabled"},
                   "Destination": {"Bucket": "arn:aws:s3:::replica-target"}}]})
    kube.create(cluster.workload("Deployment", "trainer", "img:1",
                                 env={"OUT": "s3://env-named/models/"}))
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client), policy=policy(),
                             clock=lambda: NOW)

    scan = job.scan()

    assert {c.resource: c.action for c in scan.candidates} == {
        "s3://orphan-empty": "delete", "s3://orphan-full": "notify"}
    assert {s.resource: s.reason for s in scan.skipped} == {
        "s3://team-data": "owned by team ml (tag team)",
        "s3://platform-data": "owned by team platform (tag owner)",
        "s3://exempt-data": "exempt tag steward.io/exempt=true",
        "s3://fresh-bucket": "created 2026-11-20, within 90 days",
        "s3://busy-data": "object written 2026-11-21",
        "s3://env-named": "referenced by ml/Deployment/trainer (env)",
        "s3://log-target": "logging target of team-data",
        "s3://replica-target": "replication target of team-data",
    }
    full = next(c for c in scan.candidates if c.resource == "s3://orphan-full")
    assert full.owner == "bob"
    assert full.reason == ("orphaned bucket: owner bob (tag owner) is not a known team, "
                           "3 objects, 3 bytes, nothing written in 90 days (last 2025-10-18), "
                           "not referenced in the cluster")
    assert full.reclaim == {}  # only told: nothing is reclaimed
    assert full.evidence["bytes"] == 3 and full.evidence["objects"] == 3
    empty = next(c for c in scan.candidates if c.resource == "s3://orphan-empty")
    assert empty.evidence["uid"] == "orphan-empty@2025-10-18T12:00:00Z"
    assert empty.reclaim == {"bytes": 0.0}


def test_mark_keeps_other_tags_and_unmark_lifts_only_ours(aws: Moto,
                                                          api_client: client.ApiClient) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-full", tags={"owner": "bob", "cost-center": "42"}, objects=1)
    make_bucket(aws, s3, "untagged-orphan")
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client), policy=policy(),
                             clock=lambda: NOW)
    candidates = {c.resource: c for c in job.scan().candidates}

    job.mark(candidates["s3://orphan-full"], deadline="2026-11-23T12:00:00Z", run_id="r1")
    job.mark(candidates["s3://untagged-orphan"], deadline="2026-11-23T12:00:00Z", run_id="r1")

    marked = tags_of(s3, "orphan-full")
    assert marked["owner"] == "bob" and marked["cost-center"] == "42"
    assert marked[MARK_TAG] == "2026-11-23"
    assert marked[REASON_TAG].startswith("orphaned bucket: owner bob")
    # Still a candidate with the mark on it: Steward's tags are not an owner.
    assert {c.resource for c in job.scan().candidates} == set(candidates)

    job.unmark("s3://orphan-full")
    job.unmark("s3://untagged-orphan")
    job.unmark("s3://no-such-bucket")
    assert tags_of(s3, "orphan-full") == {"owner": "bob", "cost-center": "42"}
    assert tags_of(s3, "untagged-orphan") == {}


def test_delete_only_empty_then_restore(aws: Moto, kube: KubeApiServer,
                                        api_client: client.ApiClient) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-empty", tags={"project": "old"})
    s3.put_bucket_versioning(Bucket="orphan-empty", VersioningConfiguration={"Status": "Enabled"})
    bucket_policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObjectAcl",
        "Resource": "arn:aws:s3:::orphan-empty/*"}]})
    s3.put_bucket_policy(Bucket="orphan-empty", Policy=bucket_policy)
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client), policy=policy(),
                             clock=lambda: NOW)
    (candidate,) = job.scan().candidates
    job.mark(candidate, deadline="2026-11-23T12:00:00Z", run_id="r1")
    current = job.recheck("s3://orphan-empty")
    assert current is not None and current.action == "delete"

    record = job.restore_record(current)
    assert json.loads(json.dumps(record)) == record  # the engine stores it as JSON
    assert record["versioning"] == "Enabled" and record["policy"] == bucket_policy

    # A write between the recheck and the act stops the delete.
    s3.put_object(Bucket="orphan-empty", Key="late.txt", Body=b"x")
    with pytest.raises(S3Error, match="no longer empty"):
        job.act(current)
    s3.delete_object(Bucket="orphan-empty", Key="late.txt")
    for version in s3.list_object_versions(Bucket="orphan-empty").get("Versions", []) + \
            s3.list_object_versions(Bucket="orphan-empty").get("DeleteMarkers", []):
        s3.delete_object(Bucket="orphan-empty", Key=version["Key"],
                         VersionId=version["VersionId"])

    assert job.observe(current, record).state == "not_done"
    job.act(current)
    assert not S3Buckets(s3).exists("orphan-empty")
    job.act(current)  # idempotent: already deleted
    assert job.recheck("s3://orphan-empty") is None
    assert job.observe(current, record).state == "done"

    job.restore(record, restore_id="r1")
    assert S3Buckets(s3).exists("orphan-empty")
    # Without Steward's mark; with the restore that made it, so a retry knows it.
    assert tags_of(s3, "orphan-empty") == {"project": "old", RESTORED_TAG: "r1"}
    job.restore(record, restore_id="r1")  # a retry of the same restore: fine
    with pytest.raises(RuntimeError, match="exists again and is not the one deleted"):
        job.restore(record, restore_id="another restore")
    assert s3.get_bucket_policy(Bucket="orphan-empty")["Policy"] == bucket_policy
    assert s3.get_bucket_versioning(Bucket="orphan-empty")["Status"] == "Enabled"


def test_non_empty_orphans_get_an_expiry_rule_when_allowed(aws: Moto,
                                                            api_client: client.ApiClient
                                                            ) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-full", objects=4)
    own_rule = {"ID": "archive", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(Bucket="orphan-full",
                                          LifecycleConfiguration={"Rules": [own_rule]})
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client),
                             policy=policy(expire_non_empty=True, expire_after_days=30),
                             clock=lambda: NOW)
    (candidate,) = job.scan().candidates
    assert candidate.action == "expire_objects"
    assert candidate.reclaim == {"bytes": 4.0}
    record = job.restore_record(candidate)

    assert job.observe(candidate, record).state == "not_done"
    job.act(candidate)
    job.act(candidate)  # the same rule again, not a second one
    assert job.observe(candidate, record).state == "done"

    rules = s3.get_bucket_lifecycle_configuration(Bucket="orphan-full")["Rules"]
    assert [r["ID"] for r in rules] == ["archive", EXPIRE_RULE_ID]
    ours = rules[1]
    assert ours["Expiration"]["Date"].date().isoformat() == "2026-12-23"  # 30 days, midnight
    assert s3.list_objects_v2(Bucket="orphan-full")["KeyCount"] == 4  # nothing deleted now

    job.restore(record, restore_id="r1")
    rules = s3.get_bucket_lifecycle_configuration(Bucket="orphan-full")["Rules"]
    assert [r["ID"] for r in rules] == ["archive"]
    assert job.observe(candidate, record).state == "not_done"


def test_expiry_of_a_versioned_bucket_spares_old_noncurrent_versions_for_the_grace() -> None:
    rules = expiry_rules(now=NOW, policy=policy(expire_after_days=30), versioned=True,
                         oldest_write=NOW - timedelta(days=400))
    assert rules[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 431}
    assert rules[1]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert "NoncurrentVersionExpiration" not in expiry_rules(
        now=NOW, policy=policy(), versioned=False, oldest_write=None)[0]


def test_scope_patterns_and_cheap_guards_first(aws: Moto, kube: KubeApiServer,
                                               api_client: client.ApiClient) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "tmp-scratch", objects=1)
    make_bucket(aws, s3, "prod-models", objects=1)
    make_bucket(aws, s3, "tmp-named")
    kube.create(cluster.configmap("cfg", {"bucket": "tmp-named"}))
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client),
                             policy=policy(buckets=["tmp-*"]), clock=lambda: NOW)
    calls = count_calls(s3)

    scan = job.scan()

    assert [c.resource for c in scan.candidates] == ["s3://tmp-scratch"]
    assert {s.resource: s.reason for s in scan.skipped} == {
        "s3://prod-models": "not in scope (hygiene.orphaned_buckets.buckets)",
        "s3://tmp-named": "referenced by ml/ConfigMap/cfg"}
    # Out of scope or referenced: not one call about them. One listing by version (no
    # versioning read to choose the call); versioning then for the candidate only. Logging
    # is read for every bucket (any of them could log into the candidate); replication for
    # none: the candidate is not versioned, and S3 replicates into versioned buckets only.
    assert calls == {"ListBuckets": 1, "GetBucketTagging": 1, "ListObjectVersions": 1,
                     "GetBucketVersioning": 1, "GetBucketLogging": 3}


def test_nothing_is_decided_when_the_cluster_cannot_be_read(aws: Moto, kube: KubeApiServer,
                                                           api_client: client.ApiClient
                                                           ) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-empty")
    job = OrphanedBucketsJob(S3Buckets(s3), ClusterReferences(api_client), policy=policy(),
                             clock=lambda: NOW)
    kube.inject_fault(path_regex=r"/configmaps$", status=500, times=None)
    with pytest.raises(ScanFailed, match="cluster references"):
        job.scan()
    with pytest.raises(ScanFailed):
        job.recheck("s3://orphan-empty")


def test_from_config_and_build(aws: Moto, api_client: client.ApiClient,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = StewardConfig.model_validate({
        "aws": {"endpoint_url": aws.url, "region": "us-east-1"},
        "hygiene": {"orphaned_buckets": {"teams": ["ml"]}}})
    make_bucket(aws, aws.client("s3"), "orphan-empty")
    built = build(JobContext(config=config, api_client=api_client,
                             clock=lambda: NOW.timestamp()))
    assert (built.name, built.unit) == ("orphaned-buckets", "bytes")
    assert [c.resource for c in built.scan().candidates] == ["s3://orphan-empty"]
    with pytest.raises(JobUnavailable):
        build(JobContext(config=config, api_client=None))
    # A restore needs only S3: built without a cluster, and it decides nothing.
    for_restore = build(JobContext(config=config, api_client=None, for_restore=True))
    with pytest.raises(ScanFailed, match="a restore reads no cluster references"):
        for_restore.scan()
