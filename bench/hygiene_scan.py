"""Scan cost of the stale-images and orphaned-buckets jobs against moto, over HTTP.

Run: ``.venv/bin/python bench/hygiene_scan.py [--repositories 200] [--images 20000]
[--buckets 1000] [--rounds 3] [--json]``

The fleet is written straight into moto's in-process backends (setup is not measured): ECR
repositories with ``--images`` images spread evenly, a third of them old and never pulled,
a few multi-arch indexes; S3 buckets a third owned by a known team, a third by an unknown
owner, a third untagged, most quiet, some written to recently, some holding 1,500 objects
(two pages).

Reported, all measured in this run (median of ``--rounds``):

- scan seconds of each job (as ``steward hygiene run`` does it, default parallelism), and
  of the bucket job with one worker, against the reference: a bare boto3 paginator that
  only lists the same resources (repositories and their images; buckets and their objects)
  in pages of the maximum size; the ratio job/reference;
- API calls, counted with botocore's ``before-call`` event, by operation, against the
  minimum: the reference's calls, which are pages of the maximum size. A bucket's tags,
  versioning, logging and replication have no bulk API: the job's extra calls are those,
  once per bucket that gets that far.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import OrphanedBucketsConfig, StaleImagesConfig  # noqa: E402
from agent.controller.hygiene.buckets.job import OrphanedBucketsJob  # noqa: E402
from agent.controller.hygiene.buckets.policy import BucketPolicy  # noqa: E402
from agent.controller.hygiene.buckets.s3 import S3Buckets  # noqa: E402
from agent.controller.hygiene.images.ecr import EcrRegistry  # noqa: E402
from agent.controller.hygiene.images.job import StaleImagesJob  # noqa: E402
from agent.controller.hygiene.images.policy import ImagePolicy  # noqa: E402
from agent.controller.hygiene.references import (  # noqa: E402
    BucketReferences,
    ImageReferences,
)
from agent.sim.moto import ACCOUNT, OCI_INDEX, OCI_MANIFEST, REGION, running_moto  # noqa: E402

NOW = datetime.now(UTC)


class NoReferences:
    """The cluster side is not what is measured here: an empty cluster."""

    def image_references(self) -> ImageReferences:
        return ImageReferences()

    def bucket_references(self) -> BucketReferences:
        return BucketReferences()


def seed_ecr(repositories: int, images: int) -> int:
    from moto.ecr.models import ecr_backends

    backend = ecr_backends[ACCOUNT][REGION]
    per_repo = images // repositories
    made = 0
    for r in range(repositories):
        name = f"team{r % 20}/model-{r}"
        backend.create_repository(name, None, {}, {}, "MUTABLE", [])
        children: list[tuple[str, str]] = []
        for i in range(per_repo):
            body = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "size": 1000 + i,
                           "digest": "sha256:" + hashlib.sha256(f"c{r}-{i}".encode()).hexdigest()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "size": 10_000, "digest": "sha256:" + hashlib.sha256(
                                f"l{r}-{i}".encode()).hexdigest()}]})
            digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
            # Every tenth image is an untagged child of the index below.
            tag = None if i % 10 == 9 else f"build-{i}"
            image = backend.put_image(name, body, tag, OCI_MANIFEST, digest)
            age = 400 - i * 3 if i % 3 == 0 else 10
            image.image_pushed_at = int((NOW - timedelta(days=age)).timestamp())
            if i % 5 == 0:
                image.last_recorded_pull_time = NOW - timedelta(days=age // 2)
            if tag is None:
                children.append((digest, body))
            made += 1
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b)} for d, b in children]})
        image = backend.put_image(name, index, "multi", OCI_INDEX,
                                  "sha256:" + hashlib.sha256(index.encode()).hexdigest())
        image.image_pushed_at = int((NOW - timedelta(days=300)).timestamp())
    return made


def seed_s3(buckets: int) -> int:
    from moto.s3.models import s3_backends

    backend = s3_backends[ACCOUNT]["aws"]
    old = (NOW - timedelta(days=400)).replace(tzinfo=None)
    objects = 0
    for b in range(buckets):
        name = f"bench-bucket-{b:05d}"
        bucket = backend.create_bucket(name, REGION)
        bucket.creation_date = NOW - timedelta(days=500)
        if b % 3 == 0:
            backend.put_bucket_tagging(name, {"team": "ml"})
        elif b % 3 == 1:
            backend.put_bucket_tagging(name, {"owner": f"person-{b}"})
        count = 1500 if b % 50 == 0 else 5
        for k in range(count):
            key = backend.put_object(name, f"data/part-{k:05d}", b"x" * 100)
            key.last_modified = old
        if b % 7 == 0:
            backend.put_object(name, "data/fresh", b"new")  # written now
        objects += count
    return objects


def counted(client: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def record(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.*.*", record)
    return calls


def measure(work: Callable[[], Any], calls: Counter[str], rounds: int
            ) -> tuple[float, Counter[str], Any]:
    times = []
    seen: Counter[str] = Counter()
    result = None
    for _ in range(rounds):
        calls.clear()
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
        seen = Counter(calls)
    return statistics.median(times), seen, result


def list_ecr(ecr: Any) -> int:
    count = 0
    for page in ecr.get_paginator("describe_repositories").paginate(
            PaginationConfig={"PageSize": 1000}):
        for repo in page["repositories"]:
            for images in ecr.get_paginator("describe_images").paginate(
                    repositoryName=repo["repositoryName"], PaginationConfig={"PageSize": 1000}):
                count += len(images["imageDetails"])
    return count


def list_s3(s3: Any) -> int:
    count = 0
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket["Name"], PaginationConfig={"PageSize": 1000}):
            count += page.get("KeyCount", 0)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--buckets", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results: dict[str, Any] = {}
    with running_moto() as moto:
        started = time.perf_counter()
        images = seed_ecr(args.repositories, args.images)
        objects = seed_s3(args.buckets)
        setup = time.perf_counter() - started

        ecr, s3 = moto.client("ecr"), moto.client("s3")
        ecr_calls, s3_calls = counted(ecr), counted(s3)
        refs = NoReferences()
        image_job = StaleImagesJob(
            [EcrRegistry(ecr, registry_id=ACCOUNT)], refs,
            policy=ImagePolicy.from_config(StaleImagesConfig()), clock=lambda: NOW)
        settings = OrphanedBucketsConfig(teams=["ml"])
        bucket_job = OrphanedBucketsJob(S3Buckets(s3), refs,
                                        policy=BucketPolicy.from_config(settings),
                                        clock=lambda: NOW)
        serial_job = OrphanedBucketsJob(S3Buckets(s3), refs,
                                        policy=BucketPolicy.from_config(settings),
                                        clock=lambda: NOW, max_workers=1)

        ref_ecr_s, ref_ecr_calls, listed = measure(lambda: list_ecr(ecr), ecr_calls, args.rounds)
        job_ecr_s, job_ecr_calls, image_scan = measure(image_job.scan, ecr_calls, args.rounds)
        ref_s3_s, ref_s3_calls, listed_objects = measure(lambda: list_s3(s3), s3_calls,
                                                         args.rounds)
        job_s3_s, job_s3_calls, bucket_scan = measure(bucket_job.scan, s3_calls, args.rounds)
        serial_s3_s, _, _ = measure(serial_job.scan, s3_calls, args.rounds)

    results = {
        "setup_seconds": round(setup, 2),
        "ecr": {
            "repositories": args.repositories, "images": images + args.repositories,
            "listed": listed,
            "reference_seconds": round(ref_ecr_s, 3), "scan_seconds": round(job_ecr_s, 3),
            "ratio": round(job_ecr_s / ref_ecr_s, 2),
            "reference_calls": dict(ref_ecr_calls), "scan_calls": dict(job_ecr_calls),
            "calls_ratio": round(sum(job_ecr_calls.values()) / sum(ref_ecr_calls.values()), 2),
            "candidates": len(image_scan.candidates), "skipped": len(image_scan.skipped),
        },
        "s3": {
            "buckets": args.buckets, "objects": objects, "listed_objects": listed_objects,
            "reference_seconds": round(ref_s3_s, 3), "scan_seconds": round(job_s3_s, 3),
            "scan_seconds_one_worker": round(serial_s3_s, 3),
            "ratio": round(job_s3_s / ref_s3_s, 2),
            "ratio_one_worker": round(serial_s3_s / ref_s3_s, 2),
            "reference_calls": dict(ref_s3_calls), "scan_calls": dict(job_s3_calls),
            "calls_ratio": round(sum(job_s3_calls.values()) / sum(ref_s3_calls.values()), 2),
            "object_list_calls": job_s3_calls.get("ListObjectsV2", 0),
            "object_list_calls_reference": ref_s3_calls.get("ListObjectsV2", 0),
            "candidates": len(bucket_scan.candidates), "skipped": len(bucket_scan.skipped),
        },
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    e, b = results["ecr"], results["s3"]
    print(f"setup (not measured): {results['setup_seconds']} s")
    print(f"ECR: {e['repositories']} repositories, {e['images']} images")
    print(f"  reference paginators : {e['reference_seconds']:.3f} s, "
          f"{sum(e['reference_calls'].values())} calls {e['reference_calls']}")
    print(f"  stale-images scan    : {e['scan_seconds']:.3f} s, "
          f"{sum(e['scan_calls'].values())} calls {e['scan_calls']}")
    print(f"  ratio {e['ratio']}x time, {e['calls_ratio']}x calls of the minimum; "
          f"{e['candidates']} candidates, {e['skipped']} skipped")
    print(f"S3: {b['buckets']} buckets, {b['objects']} objects")
    print(f"  reference paginators : {b['reference_seconds']:.3f} s, "
          f"{sum(b['reference_calls'].values())} calls {b['reference_calls']}")
    print(f"  orphaned-buckets scan: {b['scan_seconds']:.3f} s (one worker "
          f"{b['scan_seconds_one_worker']:.3f} s), {sum(b['scan_calls'].values())} calls "
          f"{b['scan_calls']}")
    print(f"  ratio {b['ratio']}x time ({b['ratio_one_worker']}x with one worker), "
          f"{b['calls_ratio']}x calls; object listing {b['object_list_calls']} calls vs "
          f"{b['object_list_calls_reference']} to list everything; "
          f"{b['candidates']} candidates, {b['skipped']} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
