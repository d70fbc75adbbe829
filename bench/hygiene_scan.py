"""Scan cost of the stale-images and orphaned-buckets jobs against moto, over HTTP, against the
fewest calls any correct scan must make.

Run: ``.venv/bin/python bench/hygiene_scan.py [--repositories 200] [--images 20000]
[--buckets 1000] [--rounds 3] [--json]``

The fleet is written straight into moto's in-process backends (setup is not measured): ECR
repositories with ``--images`` images spread evenly, a third of them old and never pulled,
one multi-arch index each; S3 buckets a third owned by a known team, a third by an unknown
owner, a third untagged, most quiet, some written to recently, some holding 1,500 objects
(two pages).

The reference is the minimum, made by bare boto3 calls with the same parallelism as the job
(8 at a time), nothing decided but where to stop:

- ECR: ``describe_repositories`` pages; per repository ``describe_images`` pages of 1,000
  (every field the policy reads is there), ``batch_get_image`` of its index manifests only
  (100 a call: their children are in no listing), and ``list_tags_for_resource`` for the
  repositories that hold a candidate (exemption and owner; ECR has no bulk call for tags);
- S3: ``list_buckets``; ``get_bucket_tagging`` for each bucket no free guard settled; for
  those the tags leave in play, ``list_object_versions`` pages of 1,000 up to the first
  recent object (an unversioned bucket lists the same way); for the quiet ones their
  versioning (their evidence, and only a versioned bucket can be a replication destination);
  then every bucket's logging configuration (S3 cannot be asked who logs into a bucket), and
  every bucket's replication only when a quiet bucket is versioned.

Which repositories hold a candidate and which buckets the tags leave in play come from a
scan made before the timing. Reported (median of ``--rounds``): seconds of each, the time
ratio job / reference, the calls by operation of each, and calls job / minimum (targets:
<= 1.2 both).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import OrphanedBucketsConfig, StaleImagesConfig  # noqa: E402
from agent.controller.hygiene.buckets.job import OrphanedBucketsJob  # noqa: E402
from agent.controller.hygiene.buckets.policy import BucketPolicy, tag_guard  # noqa: E402
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


WORKERS = 8


def parallel(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(work, items))


def minimal_ecr(ecr: Any, with_candidates: set[str]) -> int:
    """The fewest ECR calls a correct scan makes (see the module docstring)."""
    names = [repo["repositoryName"] for page in ecr.get_paginator(
        "describe_repositories").paginate(PaginationConfig={"PageSize": 1000})
        for repo in page["repositories"]]

    def repository(name: str) -> int:
        details = [d for page in ecr.get_paginator("describe_images").paginate(
            repositoryName=name, PaginationConfig={"PageSize": 1000})
            for d in page["imageDetails"]]
        indexes = [d["imageDigest"] for d in details
                   if d.get("imageManifestMediaType") == OCI_INDEX]
        for start in range(0, len(indexes), 100):
            ecr.batch_get_image(repositoryName=name, acceptedMediaTypes=[OCI_INDEX],
                                imageIds=[{"imageDigest": d} for d in indexes[start:start + 100]])
        if name in with_candidates:
            ecr.list_tags_for_resource(
                resourceArn=f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}")
        return len(details)

    return sum(parallel(repository, names))


def minimal_s3(s3: Any, policy: BucketPolicy) -> int:
    """The fewest S3 calls a correct scan makes (see the module docstring)."""
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    since = NOW - policy.quiet_for

    def in_play(name: str) -> bool:
        try:
            tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]}
        except s3.exceptions.ClientError:
            tags = {}
        return tag_guard(tags, policy) is None

    def quiet(name: str) -> bool:
        for page in s3.get_paginator("list_object_versions").paginate(
                Bucket=name, PaginationConfig={"PageSize": 1000}):
            if any(v["LastModified"] >= since for v in [*page.get("Versions", []),
                                                        *page.get("DeleteMarkers", [])]):
                return False
        return True

    listed = [n for n, keep in zip(names, parallel(in_play, names), strict=True) if keep]
    still = [n for n, keep in zip(listed, parallel(quiet, listed), strict=True) if keep]
    versioned = parallel(lambda n: s3.get_bucket_versioning(Bucket=n).get("Status"), still)
    if still:
        parallel(lambda n: s3.get_bucket_logging(Bucket=n), names)
    if any(versioned):
        def replication(name: str) -> None:
            with contextlib.suppress(s3.exceptions.ClientError):  # none configured
                s3.get_bucket_replication(Bucket=name)
        parallel(replication, names)
    return len(still)


def compare(reference: Callable[[], Any], job: Callable[[], Any], calls: Counter[str],
            rounds: int) -> dict[str, Any]:
    """Reference and job, one after the other in each round (so both see the same load)."""
    ref_times, job_times = [], []
    ref_calls: Counter[str] = Counter()
    job_calls: Counter[str] = Counter()
    result = None
    for _ in range(rounds):
        calls.clear()
        started = time.perf_counter()
        reference()
        ref_times.append(time.perf_counter() - started)
        ref_calls = Counter(calls)
        calls.clear()
        started = time.perf_counter()
        result = job()
        job_times.append(time.perf_counter() - started)
        job_calls = Counter(calls)
    ref_s, job_s = statistics.median(ref_times), statistics.median(job_times)
    return {
        "reference_seconds": round(ref_s, 3), "scan_seconds": round(job_s, 3),
        "ratio": round(job_s / ref_s, 2),
        "ratios": [round(j / r, 2) for j, r in zip(job_times, ref_times, strict=True)],
        "minimum_calls": dict(sorted(ref_calls.items())),
        "scan_calls": dict(sorted(job_calls.items())),
        "calls_ratio": round(sum(job_calls.values()) / sum(ref_calls.values()), 2),
        "candidates": len(result.candidates), "skipped": len(result.skipped),
    }


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
        policy = BucketPolicy.from_config(settings)
        bucket_job = OrphanedBucketsJob(S3Buckets(s3), refs, policy=policy, clock=lambda: NOW,
                                        max_workers=WORKERS)
        # Which repositories hold a candidate: the only ones whose tags any scan must read.
        with_candidates = {str(c.evidence["repository"]) for c in image_job.scan().candidates}
        ecr_result = compare(lambda: minimal_ecr(ecr, with_candidates), image_job.scan,
                             ecr_calls, args.rounds)
        s3_result = compare(lambda: minimal_s3(s3, policy), bucket_job.scan, s3_calls,
                            args.rounds)

    results = {
        "setup_seconds": round(setup, 2),
        "ecr": {"repositories": args.repositories, "images": images + args.repositories,
                **ecr_result},
        "s3": {"buckets": args.buckets, "objects": objects, **s3_result},
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"setup (not measured): {results['setup_seconds']} s")
    for key, title, job in (("ecr", "ECR", "stale-images scan"),
                            ("s3", "S3", "orphaned-buckets scan")):
        r = results[key]
        size = (f"{r['repositories']} repositories, {r['images']} images" if key == "ecr"
                else f"{r['buckets']} buckets, {r['objects']} objects")
        print(f"{title}: {size}")
        print(f"  minimum (bare boto3): {r['reference_seconds']:.3f} s, "
              f"{sum(r['minimum_calls'].values())} calls {r['minimum_calls']}")
        print(f"  {job:20}: {r['scan_seconds']:.3f} s, "
              f"{sum(r['scan_calls'].values())} calls {r['scan_calls']}")
        print(f"  ratio {r['ratio']}x time (rounds {r['ratios']}), {r['calls_ratio']}x calls "
              f"of the minimum; {r['candidates']} candidates, {r['skipped']} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
