"""A listing that failed part-way is a failed read, never a short list: a bucket whose second
page of objects cannot be read is not "quiet" or "empty", a registry catalog whose second
page fails is not "these repositories". The failures are made by a proxy in front of the
real servers (moto, the Debian registry)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from kubernetes import client

from agent.controller.hygiene.buckets.job import OrphanedBucketsJob
from agent.controller.hygiene.buckets.s3 import S3Buckets, S3Error
from agent.controller.hygiene.images.job import StaleImagesJob
from agent.controller.hygiene.images.oci import OciRegistry
from agent.controller.hygiene.images.registry import RegistryError
from agent.controller.hygiene.model import ScanFailed
from agent.controller.hygiene.references import ClusterReferences
from agent.sim.moto import Moto
from tests.hygiene_jobs.conftest import NOW
from tests.hygiene_jobs.test_orphaned_buckets_job import OLD, make_bucket, policy
from tests.hygiene_jobs.test_stale_images_job import POLICY
from tests.support.holding_proxy import HoldingProxy, holding_proxy
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_proxy(aws: Moto) -> Iterator[HoldingProxy]:
    with holding_proxy(aws.url) as proxy:
        yield proxy


def s3_through(proxy: HoldingProxy) -> Any:
    return boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_a_bucket_whose_second_page_fails_is_skipped_not_judged(
        aws: Moto, s3_proxy: HoldingProxy, api_client: client.ApiClient) -> None:
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-big", objects=1001)  # two pages of 1000
    job = OrphanedBucketsJob(S3Buckets(s3_through(s3_proxy)), ClusterReferences(api_client),
                             policy=policy(), clock=lambda: NOW)
    with aws.access_logs_off():
        whole = job.scan()
        assert [c.resource for c in whole.candidates] == ["s3://orphan-big"]
        assert whole.candidates[0].evidence["objects"] == 1001
        assert whole.candidates[0].evidence["pages_listed"] == 2

        # The second page of the listing by version (key-marker: where the first one ended).
        s3_proxy.fail("GET", r"^/orphan-big\?.*key-marker=", status=500, times=None)
        partial = job.scan()
    assert partial.candidates == []
    (skipped,) = partial.skipped
    assert skipped.resource == "s3://orphan-big"
    assert skipped.reason.startswith("objects unreadable")


def test_a_quiet_bucket_whose_versioning_cannot_be_read_is_skipped_not_judged(
        aws: Moto, s3_proxy: HoldingProxy, api_client: client.ApiClient) -> None:
    """Versioning is read only for the buckets still in play; unread, the bucket is left."""
    s3 = aws.client("s3")
    make_bucket(aws, s3, "orphan-empty")
    make_bucket(aws, s3, "orphan-other")
    job = OrphanedBucketsJob(S3Buckets(s3_through(s3_proxy)), ClusterReferences(api_client),
                             policy=policy(), clock=lambda: NOW)
    with aws.access_logs_off():
        s3_proxy.fail("GET", r"^/orphan-empty\?versioning", status=500, times=None)
        scan = job.scan()
    assert [c.resource for c in scan.candidates] == ["s3://orphan-other"]
    assert [(s.resource, s.reason.split(" (")[0]) for s in scan.skipped] == [
        ("s3://orphan-empty", "versioning unreadable")]


def test_a_truncated_page_without_a_token_is_a_failed_listing() -> None:
    """What no S3 sends but a broken proxy might: "more" without saying where from."""

    class Truncating:
        def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
            return {"Contents": [{"Key": "a", "Size": 1, "LastModified": OLD}],
                    "IsTruncated": True}

    with pytest.raises(S3Error, match="truncated page without NextContinuationToken"):
        S3Buckets(Truncating()).activity("b", since=NOW - timedelta(days=90), versioned=False)


@pytest.mark.parametrize("status", [500, 404])
def test_a_catalog_whose_second_page_fails_fails_the_scan(
        registry: Registry, api_client: client.ApiClient, status: int) -> None:
    """404 included: a later page that is gone is not the end of the list."""
    old = NOW - timedelta(days=100)
    for repository in ("ml/a", "ml/b", "ml/c"):
        registry.push_image(repository, tag="exp", created=old, layers=[repository.encode()])
    with holding_proxy(registry.url) as proxy:
        oci = OciRegistry(proxy.url, repositories=["ml/*"], page_size=1)
        job = StaleImagesJob([oci], ClusterReferences(api_client), policy=POLICY,
                             clock=lambda: NOW)
        assert oci.repositories() == ["ml/a", "ml/b", "ml/c"]  # one page each
        assert len(job.scan().skipped) == 3
        proxy.fail("GET", r"^/v2/_catalog\?.*last=ml%2Fa", status=status, times=None)
        with pytest.raises(ScanFailed, match="a later page: the listing stopped part-way"):
            job.scan()
        with pytest.raises(RegistryError, match=f"HTTP {status}"):
            oci.repositories()
