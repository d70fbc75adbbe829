"""Kill-after-effect for the stale-images and orphaned-buckets jobs: ``steward hygiene run
--apply`` in a child process is SIGKILLed once the server (moto, the Debian registry) has
acted on the sweep's write and before the reply reaches it (a proxy holds the reply). The
next run must record the action as done, exactly once, with the owner told; a restore, with
no Kubernetes cluster configured, must bring it back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agent.config import load_config
from agent.controller.hygiene.buckets.policy import EXPIRE_RULE_ID, RESTORED_TAG
from agent.controller.hygiene.runner import HygieneRuntime
from agent.sim.kube_api import KubeApiServer
from agent.sim.moto import Moto
from tests.hygiene.conftest import RecordingNotifier
from tests.hygiene.crashing import killed_while_held, kubeconfig, steward, write_config
from tests.hygiene_jobs.test_orphaned_buckets_job import make_bucket, tags_of
from tests.support.holding_proxy import HoldingProxy, holding_proxy
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

OLD = datetime.now(UTC) - timedelta(days=400)
CAPS = {"mark_hours": 0, "max_percent": 100, "max_actions": 10}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)


def configs(tmp_path: Path, kube: KubeApiServer, settings: dict[str, Any]) -> tuple[Path, Path]:
    """(the run's config, the restore's: the same without any Kubernetes cluster)."""
    base = {"state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "controller": {"lease_namespace": "steward", "identity": "crash-test"},
            **settings}
    run = write_config(tmp_path / "run.yaml", {
        **base, "kubernetes": {"kubeconfig": str(kubeconfig(kube, tmp_path / "kubeconfig"))}})
    return run, write_config(tmp_path / "restore.yaml", base)


def runtime_of(config: Path, api_client: client.ApiClient,
               notifier: RecordingNotifier) -> HygieneRuntime:
    return HygieneRuntime(load_config(config), api_client=api_client, notifier=notifier)


def audit_of(runtime: HygieneRuntime, job: str, action: str) -> list[str]:
    return [e["status"] for e in runtime.store().audit_entries(job) if e["action"] == action]


# --------------------------------------------------------------------------- buckets


@pytest.fixture
def s3_proxy(aws: Moto) -> Iterator[HoldingProxy]:
    with holding_proxy(aws.url) as proxy:
        yield proxy


@pytest.mark.parametrize(("bucket", "method", "request_path", "action"), [
    ("orphan-empty", "DELETE", r"^/orphan-empty$", "delete"),
    ("orphan-full", "PUT", r"^/orphan-full\?lifecycle", "expire_objects"),
])
def test_buckets_killed_after_the_write_took_effect(
        aws: Moto, s3_proxy: HoldingProxy, kube: KubeApiServer, api_client: client.ApiClient,
        aws_env: None, tmp_path: Path, bucket: str, method: str, request_path: str,
        action: str) -> None:
    """Issue 13, defect 4 (DeleteBucket), and the same for the expiry rule."""
    s3 = aws.client("s3")
    make_bucket(aws, s3, bucket, tags={"project": "old"},
                objects=0 if action == "delete" else 3, created=OLD)
    run, restore = configs(tmp_path, kube, {
        "aws": {"endpoint_url": s3_proxy.url, "region": "us-east-1"},
        "hygiene": {"orphaned_buckets": {"teams": ["ml"], "expire_non_empty": True, **CAPS}}})
    notifier = RecordingNotifier()
    runtime = runtime_of(run, api_client, notifier)
    log = tmp_path / "crash.log"
    with aws.access_logs_off():
        first = runtime.run("orphaned-buckets", apply=True)
        assert first.result == "succeeded", first.reason
        hold = s3_proxy.hold(method, request_path)
        killed_while_held(hold, "hygiene", "run", "orphaned-buckets", "--apply", "--config",
                          str(run), log=log)
        assert hold.status in (200, 204), hold.status
        if action == "delete":
            assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        else:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
            assert EXPIRE_RULE_ID in [r["ID"] for r in rules]

        recovery = runtime.run("orphaned-buckets", apply=True)
        assert recovery.result == "succeeded", recovery.reason
        assert runtime.run("orphaned-buckets", apply=True).result == "succeeded"
    assert audit_of(runtime, "orphaned-buckets", action) == ["done"]
    assert audit_of(runtime, "orphaned-buckets", "unmark") == []
    assert len(s3_proxy.forwarded(method, request_path)) == 1, "acted twice"
    assert [n.kind for n in notifier.notices] == ["marked", "acted"]
    assert [m["state"] for m in runtime.store().marks("orphaned-buckets")] == ["swept"]

    result = steward("hygiene", "restore", "orphaned-buckets", f"s3://{bucket}", "--config",
                     str(restore), log=log)
    assert result.returncode == 0, log.read_text()[-2000:]
    assert result.stdout.startswith(f"restored s3://{bucket}: ")
    if action == "delete":
        assert tags_of(s3, bucket)["project"] == "old"
        assert tags_of(s3, bucket)[RESTORED_TAG]
    else:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []) \
            if _has_lifecycle(s3, bucket) else []
        assert EXPIRE_RULE_ID not in [r["ID"] for r in rules]
    assert audit_of(runtime, "orphaned-buckets", "restore") == ["done"]


def _has_lifecycle(s3: Any, bucket: str) -> bool:
    try:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    except s3.exceptions.ClientError:
        return False
    return True


# --------------------------------------------------------------------------- images


def test_images_killed_after_the_manifest_delete_took_effect(
        registry: Registry, kube: KubeApiServer, api_client: client.ApiClient,
        tmp_path: Path) -> None:
    stale = registry.push_image("ml/train", tag="exp-1", created=datetime.now(UTC) -
                                timedelta(days=100), layers=[b"x" * 400])
    with holding_proxy(registry.url) as proxy:
        run, restore = configs(tmp_path, kube, {
            "registries": [{"type": "oci", "url": proxy.url, "repositories": ["ml/train"]}],
            "hygiene": {"stale_images": {"keep_newest": 0, **CAPS}}})
        notifier = RecordingNotifier()
        runtime = runtime_of(run, api_client, notifier)
        log = tmp_path / "crash.log"
        resource = f"{proxy.netloc}/ml/train@{stale.digest}"
        first = runtime.run("stale-images", apply=True)
        assert first.result == "succeeded", first.reason
        assert [m["resource"] for m in runtime.store().marks("stale-images")] == [resource]

        manifest = rf"^/v2/ml/train/manifests/{stale.digest}$"
        hold = proxy.hold("DELETE", manifest)
        killed_while_held(hold, "hygiene", "run", "stale-images", "--apply", "--config",
                          str(run), log=log)
        assert hold.status == 202 and not registry.exists("ml/train", stale.digest)

        recovery = runtime.run("stale-images", apply=True)
        assert recovery.result == "succeeded", recovery.reason
        assert audit_of(runtime, "stale-images", "delete") == ["done"]
        assert len(proxy.forwarded("DELETE", manifest)) == 1, "deleted twice"
        assert [n.kind for n in notifier.notices] == ["marked", "acted"]

        result = steward("hygiene", "restore", "stale-images", resource, "--config",
                         str(restore), log=log)
        assert result.returncode == 0, log.read_text()[-2000:]
        assert registry.exists("ml/train", "exp-1")
        assert registry.exists("ml/train", stale.digest)
