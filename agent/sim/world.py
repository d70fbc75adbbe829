"""The simulated cluster's world beyond GPUs: the Kubernetes objects behind the simulated
pods (with the owner chains a real cluster has), and ECR images and S3 buckets in every
state the hygiene jobs must tell apart. The demo loads it; so can a test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.clients.kubernetes import objects
from agent.clients.kubernetes.gpus import is_reservation_pod
from agent.clients.kubernetes.objects import JsonObj
from agent.node.pods import PodInfo

ACCOUNT, REGION = "123456789012", "us-east-1"  # moto's defaults
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
NOTEBOOK = {"app.kubernetes.io/component": "notebook"}


def _uid(*parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _owner_chain(create: Callable[[JsonObj], JsonObj], kind: str, namespace: str, name: str,
                 image: str, *, created: datetime, labels: dict[str, str]) -> JsonObj:
    """Create the workload (and a Deployment's ReplicaSet); returns what owns the pods.

    Owner references carry the UID the API server gave the owner, so each object is created
    before the one that points at it."""
    containers = [objects.container(image, gpus=1)]
    obj = objects.workload(kind, name, namespace, labels=labels, template_labels=labels,
                           containers=containers, created=created,
                           uid=_uid(kind, namespace, name))
    obj["status"] = {"replicas": 1} if kind != "Job" else {"active": 1}
    owner = create(obj)
    if kind != "Deployment":
        return owner
    replicaset = objects.workload(
        "ReplicaSet", f"{name}-5d8c7b", namespace, labels=labels, template_labels=labels,
        containers=containers, owner=owner, created=created,
        uid=_uid("ReplicaSet", namespace, f"{name}-5d8c7b"))
    replicaset["spec"]["selector"] = {"matchLabels": {"app": name}}
    replicaset["spec"]["template"]["metadata"]["labels"] = {"app": name, **labels}
    replicaset["status"] = {"replicas": 1}
    return create(replicaset)


# workload name prefix (as the simulated pods are named) -> kind, image, labels
WORKLOAD_KINDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "train-llama": ("Job", f"{ECR_HOST}/ml/trainer:2.4.1", {}),
    "train-resnet": ("Job", f"{ECR_HOST}/ml/trainer:2.4.1", {}),
    "finetune-crashloop": ("Job", f"{ECR_HOST}/ml/trainer:2.5.0-rc1", {}),
    "eval-bert": ("Job", f"{ECR_HOST}/ml/evaluator:1.2.0", {}),
    "jupyter-alice": ("StatefulSet", f"{ECR_HOST}/ds/notebook:2026.11", NOTEBOOK),
    "jupyter-bob": ("StatefulSet", f"{ECR_HOST}/ds/notebook:2026.11", NOTEBOOK),
    "llm-server": ("Deployment", f"{ECR_HOST}/inference/llm-server:3.0.2", {}),
    "embedder": ("Deployment", f"{ECR_HOST}/inference/embedder:1.9.0", {}),
    "reranker": ("Deployment", f"{ECR_HOST}/inference/reranker:1.9.0", {}),
    "chat-api": ("Deployment", f"{ECR_HOST}/inference/chat-api:4.2.0", {}),
    # tenants of shared GPUs (time-slicing, KAI fractions, HAMi)
    "llm-serve": ("Deployment", f"{ECR_HOST}/inference/llm-server:3.0.2", {}),
    "embed-api": ("Deployment", f"{ECR_HOST}/inference/embedder:1.9.0", {}),
    "jupyter-carol": ("StatefulSet", f"{ECR_HOST}/ds/notebook:2026.11", NOTEBOOK),
    "eval-nightly": ("Job", f"{ECR_HOST}/ml/evaluator:1.2.0", {}),
    "tune-lora": ("Job", f"{ECR_HOST}/ml/trainer:2.4.1", {}),
    "jupyter-dave": ("StatefulSet", f"{ECR_HOST}/ds/notebook:2026.11", NOTEBOOK),
    "rerank-hami": ("Deployment", f"{ECR_HOST}/inference/reranker:1.9.0", {}),
}


def _workload_name(pod: str) -> str:
    return next((prefix for prefix in sorted(WORKLOAD_KINDS, key=len, reverse=True)
                 if pod.startswith(prefix)), pod)


def load_pods(create: Callable[[JsonObj], JsonObj], pods: list[PodInfo], hostname: str, *,
              now: datetime | None = None) -> int:
    """Create the API objects behind a simulated node's pods through ``create`` (which
    returns the stored object): each pod with its owner chain, created three hours ago
    (older than any idle window), bound to ``hostname``; KAI Scheduler's reservation pods
    bare, as KAI creates them. Pods that hold a GPU share without requesting a GPU (KAI
    fractions) carry their labels and annotations. Returns how many pods."""
    now = now or datetime.now(UTC)
    created = now - timedelta(hours=3)
    owners: dict[tuple[str, str], JsonObj] = {}
    count = 0
    for pod in pods:
        if pod.phase != "Running" or not (pod.gpus_requested or pod.annotations):
            continue
        owner: JsonObj | None = None
        if is_reservation_pod(pod.namespace, pod.name):
            # bare, as KAI Scheduler creates them
            image = "ghcr.io/kai-scheduler/kai-scheduler/resource-reservation:v0.9.0"
            labels = dict(pod.labels)
        else:
            workload = _workload_name(pod.name)
            kind, image, labels = WORKLOAD_KINDS.get(
                workload, ("Deployment", f"{ECR_HOST}/misc/{workload}:latest", {}))
            key = (pod.namespace, workload)
            if key not in owners:
                owners[key] = _owner_chain(create, kind, pod.namespace,
                                           f"{workload}-{hostname}", image, created=created,
                                           labels=labels)
            owner = owners[key]
            labels = {**labels, **pod.labels}
        body = objects.container(image, name=pod.containers[0].name if pod.containers
                                 else "main")
        if pod.gpu_resources:  # whole GPUs, and HAMi's amounts of one
            body["resources"] = {"limits": {k: str(v) for k, v in pod.gpu_resources.items()}}
        create(objects.pod(
            pod.name, pod.namespace, node=hostname, containers=[body], labels=labels,
            annotations=pod.annotations, owner=owner, created=created,
            uid=_uid("Pod", pod.namespace, pod.name),
            status={"phase": "Running", "startTime": objects.iso_time(created)}))
        count += 1
    return count


# ECR: (repository, tag or None, pushed days ago). Images the pods above run are kept by
# reference; old untagged builds and release candidates nobody runs are candidates.
ECR_IMAGES: tuple[tuple[str, str | None, float], ...] = (
    ("ml/trainer", "2.4.1", 60), ("ml/trainer", "2.5.0-rc1", 50), ("ml/trainer", None, 120),
    ("ml/trainer", None, 95), ("ml/trainer", "2.3.0-rc2", 200), ("ml/trainer", "latest", 40),
    ("ml/evaluator", "1.2.0", 90), ("ml/evaluator", None, 300), ("ml/evaluator", "pr-481", 75),
    ("inference/llm-server", "3.0.2", 45), ("inference/llm-server", "3.0.1", 80),
    ("inference/llm-server", None, 150), ("inference/llm-server", "exp-moe", 70),
)

# S3: (bucket, tags, object ages in days, one per object; empty = an empty bucket)
S3_BUCKETS: tuple[tuple[str, dict[str, str], tuple[float, ...]], ...] = (
    ("ml-research-datasets", {"team": "ml"}, (400, 2)),
    ("tmp-export-2025-q3", {}, ()),  # empty, no owner: deleted
    ("sweep-results-old", {"owner": "former-team"}, (210, 205, 200)),  # orphan, not empty
    ("scratch-notebooks", {}, (300, 1)),  # written yesterday: kept
    ("audit-logs", {"steward.io/exempt": "true"}, (500,)),
)


def seed_aws(moto: Any, *, now: datetime | None = None) -> None:
    """Load ECR_IMAGES and S3_BUCKETS into a running moto (``agent.sim.moto.Moto``),
    with push, pull and write times back-dated in moto's backend."""
    now = now or datetime.now(UTC)
    ecr, s3 = moto.client("ecr"), moto.client("s3")
    for repository in sorted({r for r, _, _ in ECR_IMAGES}):
        ecr.create_repository(repositoryName=repository)
    for n, (repository, tag, days) in enumerate(ECR_IMAGES):
        moto.push_ecr_image(ecr, repository, tag=tag, size=(400 + 37 * n) * 2**20,
                            pushed=now - timedelta(days=days),
                            pulled=now - timedelta(days=days - 1), seed=str(n))
    for name, tags, ages in S3_BUCKETS:
        s3.create_bucket(Bucket=name)
        moto.set_bucket_created(name, now - timedelta(days=max(ages, default=400) + 10))
        if tags:
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
                {"Key": k, "Value": v} for k, v in tags.items()]})
        for i, age in enumerate(ages):
            moto.put_objects(name, [f"part-{i:05d}.parquet"],
                             written=now - timedelta(days=age), body=b"x" * 4096)
