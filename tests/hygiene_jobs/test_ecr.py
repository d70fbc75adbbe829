"""The ECR adapter against moto's server over HTTP: listing, index children, batched deletes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from agent.controller.hygiene.images.ecr import EcrRegistry, parse_registry_url
from agent.controller.hygiene.images.registry import Manifest, RegistryError
from agent.sim.moto import ACCOUNT, ECR_HOST, REGION, Moto, count_calls
from tests.hygiene_jobs.conftest import NOW

pytestmark = pytest.mark.integration


def request_bodies(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """(operation, JSON body) of every call from now on."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        seen.append((model.name, json.loads(params.get("body") or b"{}")))

    client.meta.events.register("before-call.ecr.*", record)
    return seen


def test_parse_registry_url() -> None:
    assert parse_registry_url(f"https://{ECR_HOST}") == (ACCOUNT, REGION)
    assert parse_registry_url("123456789012") == ("123456789012", None)
    assert parse_registry_url("registry.example.com") == (None, None)


def test_images_with_push_and_pull_times_sizes_and_index_children(aws: Moto) -> None:
    ecr = aws.client("ecr")
    for name in ("ml/train", "ml/serve", "web/site"):
        ecr.create_repository(repositoryName=name)
    old = aws.push_ecr_image(ecr, "ml/train", tag="v1", size=500,
                             pushed=NOW - timedelta(days=90), pulled=NOW - timedelta(days=40))
    amd = aws.push_ecr_image(ecr, "ml/train", tag=None, size=300, seed="amd64")
    arm = aws.push_ecr_image(ecr, "ml/train", tag=None, size=200, seed="arm64")
    index = aws.push_ecr_index(ecr, "ml/train", tag="multi", children=[amd, arm])
    registry = EcrRegistry(ecr, registry_id=ACCOUNT, repositories=["ml/*"])

    assert registry.repositories() == ["ml/serve", "ml/train"]
    calls = count_calls(ecr)
    bodies = request_bodies(ecr)
    facts = {f.digest: f for f in registry.images("ml/train")}

    assert set(facts) == {old.digest, amd.digest, arm.digest, index.digest}
    assert facts[old.digest].tags == ("v1",)
    assert facts[old.digest].pushed_at == (NOW - timedelta(days=90)).replace(microsecond=0)
    assert facts[old.digest].last_pulled_at is not None
    assert abs(facts[old.digest].last_pulled_at - (NOW - timedelta(days=40))) < \
        timedelta(seconds=1)
    assert facts[old.digest].size_bytes == 500
    assert facts[index.digest].children == (amd.digest, arm.digest)
    assert facts[index.digest].size_bytes == 500  # an index holds its children
    assert facts[amd.digest].tags == ()
    # One page of describe_images at the maximum size, one batch_get_image for the index.
    assert calls == {"DescribeImages": 1, "BatchGetImage": 1}
    assert bodies[0][1]["maxResults"] == 1000
    assert bodies[0][1]["registryId"] == ACCOUNT
    assert bodies[1][1]["imageIds"] == [{"imageDigest": index.digest}]


def test_deletes_go_in_batches_of_100_and_gone_is_deleted(aws: Moto) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="bulk")
    digests = [aws.push_ecr_image(ecr, "bulk", tag=f"t{i}", seed=str(i)).digest
               for i in range(150)]
    registry = EcrRegistry(ecr)
    calls = count_calls(ecr)

    registry.delete("bulk", digests)

    assert calls == {"BatchDeleteImage": 2}
    assert ecr.describe_images(repositoryName="bulk")["imageDetails"] == []
    registry.delete("bulk", digests[:3])  # again: already gone is success
    registry.delete("no-such-repo", digests[:1])


def test_a_vanished_repository_has_no_images_and_a_dead_endpoint_is_an_error() -> None:
    import boto3
    from botocore.config import Config

    from tests.support.net import free_port

    dead = boto3.client("ecr", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(RegistryError, match="describe_repositories"):
        EcrRegistry(dead).repositories()


def test_missing_repository_is_empty(aws: Moto) -> None:
    assert EcrRegistry(aws.client("ecr")).images("missing") == []


def test_manifest_round_trip_for_restore(aws: Moto) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="ml/train")
    image = aws.push_ecr_image(ecr, "ml/train", tag="keepme")
    registry = EcrRegistry(ecr)
    manifest = registry.manifest("ml/train", image.digest)
    assert manifest == Manifest(image.body.encode(), image.media_type)
    assert manifest.digest == image.digest

    registry.delete("ml/train", [image.digest])
    assert registry.manifest("ml/train", image.digest) is None
    registry.put_manifest("ml/train", manifest, tag=None)
    registry.put_manifest("ml/train", manifest, tag="keepme")
    registry.put_manifest("ml/train", manifest, tag="keepme")  # twice: still restored
    (restored,) = registry.images("ml/train")
    assert (restored.digest, restored.tags) == (image.digest, ("keepme",))


def test_repository_tags(aws: Moto) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="team/x",
                          tags=[{"Key": "steward.io/exempt", "Value": "true"},
                                {"Key": "team", "Value": "vision"}])
    registry = EcrRegistry(ecr, registry_id=ACCOUNT)
    assert registry.repository_tags("team/x") == {"steward.io/exempt": "true", "team": "vision"}
