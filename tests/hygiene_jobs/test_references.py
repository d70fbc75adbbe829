"""What the cluster references, read through the official client from the API stand-in."""

from __future__ import annotations

import pytest
from kubernetes import client

from agent.controller.hygiene.references import (
    ClusterReferences,
    ImageReference,
    ReferencesUnavailable,
    bucket_words,
    index_images,
    parse_image,
)
from agent.sim.kube_api import KubeApiServer
from tests.hygiene_jobs import cluster
from tests.support.kube import KubeStandIns

REG = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
D4 = "sha256:" + "4" * 64


@pytest.mark.parametrize(("text", "expected"), [
    (f"{REG}/ml/train:v1", ImageReference(REG, "ml/train", "v1", None)),
    (f"{REG}/ml/train@{D1}", ImageReference(REG, "ml/train", None, D1)),
    (f"{REG}/ml/train:v1@{D1}", ImageReference(REG, "ml/train", "v1", D1)),
    ("localhost:5000/a/b:1", ImageReference("localhost:5000", "a/b", "1", None)),
    ("127.0.0.1:5000/a", ImageReference("127.0.0.1:5000", "a", None, None)),
    ("python:3.11", ImageReference(None, "python", "3.11", None)),
    ("library/python", ImageReference(None, "library/python", None, None)),
    (f"docker-pullable://{REG}/ml/train@{D2}", ImageReference(REG, "ml/train", None, D2)),
    (D3, ImageReference(None, "", None, D3)),
    ("", None),
    ("repo@sha256:nothex", None),
])
def test_parse_image(text: str, expected: ImageReference | None) -> None:
    assert parse_image(text) == expected


def test_untagged_reference_means_latest() -> None:
    refs = index_images([(f"{REG}/ml/serve", "ml/Deployment/serve")])
    assert refs.find("ml/serve", tags=["latest"], digests=[]) == \
        "referenced by ml/Deployment/serve (tag latest)"
    assert refs.find("ml/serve", tags=["v2"], digests=[]) is None


def test_bucket_words_cut_at_what_a_bucket_name_cannot_hold() -> None:
    words = bucket_words("s3://ml-data/x arn:aws:s3:::raw.logs/* "
                         "https://team-a.s3.eu-west-1.amazonaws.com/k Models")
    assert {"ml-data", "raw.logs", "raw", "logs", "team-a", "models"} <= words
    assert "ml" not in words and "data" not in words  # a dash never splits a name


def test_images_from_every_workload_kind(kube: KubeApiServer,
                                         api_client: client.ApiClient) -> None:
    kube.create(cluster.pod("runner", f"{REG}/ml/train:v1",
                            image_id=f"docker-pullable://{REG}/ml/train@{D1}"))
    kube.create(cluster.workload("Deployment", "serve", f"{REG}/ml/serve:v5"))
    kube.create(cluster.workload("StatefulSet", "db", f"{REG}/ml/db:v1"))
    kube.create(cluster.workload("DaemonSet", "agent", f"{REG}/ml/agent@{D2}"))
    kube.create(cluster.workload("ReplicaSet", "serve-old", f"{REG}/ml/serve:v4"))
    kube.create(cluster.job("backfill", f"{REG}/ml/backfill:2026"))
    kube.create(cluster.cronjob("nightly", f"{REG}/ml/train@{D3}"))
    kube.create(cluster.workflow_template("etl", f"{REG}/ml/etl@{D4}", bucket="etl-out"))

    refs = ClusterReferences(api_client, page_size=2).image_references()

    assert refs.find("ml/train", tags=[], digests=[D1]) == \
        "referenced by ml/Pod/runner (digest)"  # the running digest, from the status
    assert refs.find("ml/train", tags=["v1"], digests=[]) == \
        "referenced by ml/Pod/runner (tag v1)"
    assert refs.find("ml/serve", tags=["v5"], digests=[]) == \
        "referenced by ml/Deployment/serve (tag v5)"
    assert refs.find("ml/serve", tags=["v4"], digests=[]) == \
        "referenced by ml/ReplicaSet/serve-old (tag v4)"
    assert refs.find("ml/db", tags=["v1"], digests=[]) is not None
    assert refs.find("x", tags=[], digests=[D2]) == "referenced by ml/DaemonSet/agent (digest)"
    assert refs.find("ml/backfill", tags=["2026"], digests=[]) == \
        "referenced by ml/Job/backfill (tag 2026)"
    assert refs.find("ml/train", tags=[], digests=[D3]) == \
        "referenced by ml/CronJob/nightly (digest)"
    assert refs.find("ml/etl", tags=[], digests=[D4]) == \
        "referenced by ml/WorkflowTemplate/etl (digest)"
    assert refs.find("ml/train", tags=["v0"], digests=["sha256:" + "9" * 64]) is None


def test_buckets_from_configmaps_env_annotations_and_service_accounts(
        kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.create(cluster.configmap("settings", {"DATA_URL": "s3://cm-bucket/prefix"}))
    kube.create(cluster.workload("Deployment", "trainer", "img:1",
                                 env={"OUTPUT": "arn:aws:s3:::env-bucket/*"}))
    kube.create(cluster.cronjob("export", "img:1", env={"TARGET": "cron-bucket"}))
    annotated = cluster.workload("StatefulSet", "shipper", "img:1")
    annotated["spec"]["template"]["metadata"]["annotations"] = {
        "fluentbit.io/s3-bucket": "template-bucket"}
    kube.create(annotated)
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "trainer", "namespace": "ml", "annotations": {
                     "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x",
                     "steward.io/buckets": "s3://irsa-bucket"}}})
    kube.create(cluster.secret("named-bucket", {"k": "v"}))
    kube.create(cluster.workflow_template("etl", "img:1", bucket="argo-bucket"))

    refs = ClusterReferences(api_client).bucket_references()

    assert refs.find("cm-bucket") == "referenced by ml/ConfigMap/settings"
    assert refs.find("env-bucket") == "referenced by ml/Deployment/trainer (env)"
    assert refs.find("cron-bucket") == "referenced by ml/CronJob/export (env)"
    assert refs.find("template-bucket") == "referenced by ml/StatefulSet/shipper (annotation)"
    assert refs.find("irsa-bucket") == "referenced by ml/ServiceAccount/trainer (annotation)"
    assert refs.find("argo-bucket") == "referenced by ml/WorkflowTemplate/etl"
    assert refs.find("unrelated") is None
    # No namespace listed: no Secret is read at all, not even its name.
    assert refs.find("named-bucket") is None
    assert not kube.request_log(path_regex=r"/secrets")


def test_secret_metadata_only_in_the_namespaces_listed(
        kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.create(cluster.secret("named-bucket", {"k": "v"}))
    kube.create(cluster.secret("other", {"bucket": "secret-value-bucket"},
                               annotations={"steward.io/bucket": "annotated-bucket"}))
    kube.create(cluster.secret("elsewhere-bucket", {"k": "v"}, namespace="data"))

    refs = ClusterReferences(api_client, secret_namespaces=["ml"]).bucket_references()

    assert refs.find("named-bucket") == "referenced by ml/Secret/named-bucket (name)"
    assert refs.find("annotated-bucket") == "referenced by ml/Secret/other (annotation)"
    assert refs.find("secret-value-bucket") is None
    assert refs.find("elsewhere-bucket") is None
    secret_lists = kube.request_log(method="GET", path_regex=r"/secrets$")
    assert [r.path for r in secret_lists] == ["/api/v1/namespaces/ml/secrets"]
    assert all("as=PartialObjectMetadataList" in r.headers.get("accept", "")
               for r in secret_lists)


def test_absent_argo_is_not_an_error(make_kube: KubeStandIns) -> None:
    bare = make_kube(crds=())
    bare.create(cluster.workload("Deployment", "serve", f"{REG}/ml/serve:v5"))
    refs = ClusterReferences(make_kube.api_client(bare)).image_references()
    # Discovery said "not installed": no list of an Argo kind was even tried.
    assert [r.path for r in bare.request_log(path_regex="argoproj")] == [
        "/apis/argoproj.io/v1alpha1"]
    assert refs.find("ml/serve", tags=["v5"], digests=[]) is not None


def test_argo_not_granted_is_absent_where_argo_is_absent(make_kube: KubeStandIns) -> None:
    """A real server answers 403, not 404, for a list of a group it does not know when the
    grant is absent (pipelines.argo=false): discovery tells that apart from a refusal."""
    from agent.sim.kube_api import Grant

    grants = [Grant("apps", r, frozenset({"list"})) for r in
              ("deployments", "statefulsets", "daemonsets", "replicasets")]
    grants += [Grant("", "pods", frozenset({"list"})), Grant("batch", "jobs", frozenset({"list"})),
               Grant("batch", "cronjobs", frozenset({"list"}))]
    no_argo = make_kube(crds=(), grants=grants)
    no_argo.create(cluster.workload("Deployment", "serve", f"{REG}/ml/serve:v5"))
    refs = ClusterReferences(make_kube.api_client(no_argo)).image_references()
    assert refs.find("ml/serve", tags=["v5"], digests=[]) is not None
    assert not [r for r in no_argo.request_log() if r.status == 403]
    argo_not_granted = make_kube(grants=grants)
    with pytest.raises(ReferencesUnavailable, match=r"403.*pipelines\.argo=true"):
        ClusterReferences(make_kube.api_client(argo_not_granted)).image_references()


def test_an_unreadable_kind_is_unavailable_not_empty(kube: KubeApiServer,
                                                     api_client: client.ApiClient) -> None:
    kube.inject_fault(path_regex=r"/cronjobs$", status=500, times=None)
    with pytest.raises(ReferencesUnavailable, match="cronjobs"):
        ClusterReferences(api_client).image_references()
    kube.clear_faults()
    kube.inject_fault(path_regex=r"/workflowtemplates$", status=403, times=None)
    with pytest.raises(ReferencesUnavailable, match="403"):
        ClusterReferences(api_client).bucket_references()
