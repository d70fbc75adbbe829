"""The S3 adapter against moto's server over HTTP: reading as little as the answer needs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.controller.hygiene.buckets.s3 import S3Buckets, S3Error
from agent.sim.moto import Moto, count_calls
from tests.hygiene_jobs.conftest import NOW

pytestmark = pytest.mark.integration
OLD = NOW - timedelta(days=400)
SINCE = NOW - timedelta(days=90)


def test_listing_stops_at_the_first_recent_object(aws: Moto) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="busy-logs")
    aws.put_objects("busy-logs", (f"k{i:05d}" for i in range(10_000)), written=OLD)
    aws.set_written("busy-logs", "k05500", NOW - timedelta(days=1))
    calls = count_calls(s3)

    activity = S3Buckets(s3).activity("busy-logs", since=SINCE, versioned=False)

    assert activity.recent is not None
    assert abs(activity.recent - (NOW - timedelta(days=1))) < timedelta(seconds=1)
    assert activity.recent_key == "k05500"
    assert activity.pages == 6 and not activity.complete  # keys 5000-5999 are page 6 of 10
    assert calls == {"ListObjectsV2": 6}
    assert activity.objects == 6000


def test_a_quiet_bucket_is_listed_to_the_end_in_pages_of_1000(aws: Moto) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="quiet-data")
    aws.put_objects("quiet-data", (f"k{i}" for i in range(2_500)), written=OLD, body=b"12345")
    calls = count_calls(s3)

    activity = S3Buckets(s3).activity("quiet-data", since=SINCE, versioned=False)

    assert (activity.recent, activity.complete, activity.pages) == (None, True, 3)
    assert (activity.objects, activity.bytes, activity.empty) == (2_500, 12_500, False)
    assert calls == {"ListObjectsV2": 3}
    assert activity.newest is not None and activity.newest < SINCE


def test_versions_and_delete_markers_are_writes_and_keep_a_bucket_non_empty(aws: Moto) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="versioned-data")
    s3.put_bucket_versioning(Bucket="versioned-data",
                             VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="versioned-data", Key="model.bin", Body=b"weights")
    aws.set_written("versioned-data", "model.bin", OLD)
    buckets = S3Buckets(s3)
    assert buckets.versioning("versioned-data") == "Enabled"
    assert buckets.activity("versioned-data", since=SINCE, versioned=True).recent is None

    s3.delete_object(Bucket="versioned-data", Key="model.bin")  # a delete marker, now
    activity = buckets.activity("versioned-data", since=SINCE, versioned=True)
    assert activity.recent is not None and activity.objects == 2
    assert not buckets.is_empty("versioned-data")
    s3.create_bucket(Bucket="empty-bucket")
    assert buckets.is_empty("empty-bucket")
    assert buckets.activity("empty-bucket", since=SINCE, versioned=False).empty
    assert buckets.versioning("empty-bucket") is None


def test_absent_configuration_is_a_value_not_an_error(aws: Moto) -> None:
    s3 = aws.client("s3")
    for name in ("plain-bucket", "log-target", "replica-target"):
        s3.create_bucket(Bucket=name)
    s3.put_bucket_acl(Bucket="log-target",
                      GrantWrite='uri="http://acs.amazonaws.com/groups/s3/LogDelivery"',
                      GrantReadACP='uri="http://acs.amazonaws.com/groups/s3/LogDelivery"')
    s3.put_bucket_logging(Bucket="plain-bucket", BucketLoggingStatus={
        "LoggingEnabled": {"TargetBucket": "log-target", "TargetPrefix": "logs/"}})
    for name in ("plain-bucket", "replica-target"):
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_replication(Bucket="plain-bucket", ReplicationConfiguration={
        "Role": "arn:aws:iam::123456789012:role/replication",
        "Rules": [{"ID": "all", "Status": "Enabled", "Priority": 1, "Filter": {"Prefix": ""},
                   "DeleteMarkerReplication": {"Status": "Disabled"},
                   "Destination": {"Bucket": "arn:aws:s3:::replica-target"}}]})
    buckets = S3Buckets(s3)

    assert buckets.tags("log-target") == {}
    assert buckets.policy("log-target") is None
    assert buckets.lifecycle("log-target") is None
    assert buckets.logging_target("log-target") is None
    assert buckets.replication_targets("log-target") == []
    assert buckets.logging_target("plain-bucket") == "log-target"
    assert buckets.replication_targets("plain-bucket") == ["replica-target"]
    assert buckets.region("plain-bucket") == "us-east-1"
    assert buckets.exists("plain-bucket") and not buckets.exists("no-such-bucket")
    assert buckets.delete_bucket("no-such-bucket")  # already gone
    with pytest.raises(S3Error) as caught:
        buckets.tags("no-such-bucket")
    assert caught.value.code == "NoSuchBucket"
