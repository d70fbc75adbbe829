"""The OCI distribution adapter against the real docker-registry: paging, index children,
deletes by digest, and both authentication schemes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests

from agent.controller.hygiene.images.oci import OciRegistry, credentials_from, parse_challenge
from agent.controller.hygiene.images.registry import OCI_INDEX, RegistryError
from tests.hygiene_jobs.conftest import NOW
from tests.support.registry import PASSWORD, USERNAME, Registry, running_registry

pytestmark = pytest.mark.integration


class CountingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: object,
                **kwargs: object) -> requests.Response:
        self.seen.append((str(method), str(url)))
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


def test_credentials_come_from_the_environment_or_a_file(tmp_path: object) -> None:
    assert credentials_from({}) is None
    assert credentials_from({"username": "u", "password_env": "P"},
                            environ={"P": "pw"}) == ("u", "pw")
    with pytest.raises(ValueError, match="unknown key 'password'"):
        credentials_from({"username": "u", "password": "inline"})
    with pytest.raises(ValueError, match=r"\$MISSING is not set"):
        credentials_from({"username": "u", "password_env": "MISSING"}, environ={})


def test_parse_challenge() -> None:
    assert parse_challenge('Bearer realm="https://a/token",service="reg",'
                           'scope="repository:x/y:pull,delete"') == (
        "bearer", {"realm": "https://a/token", "service": "reg",
                   "scope": "repository:x/y:pull,delete"})
    assert parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})
    assert parse_challenge("") is None


def test_catalog_and_tags_page_with_link_and_null_tags(registry: Registry) -> None:
    for name in ("a/one", "a/two", "b/three", "gone"):
        pushed = registry.push_image(name, tag="t1", created=NOW)
        for extra in ("t2", "t3"):
            registry.tag(pushed, extra)
    registry.request("DELETE", f"/v2/gone/manifests/{pushed.digest}", repository="gone")
    session = CountingSession()
    oci = OciRegistry(registry.url, page_size=2, session=session)

    assert oci.repositories() == ["a/one", "a/two", "b/three", "gone"]
    assert sum(1 for _, url in session.seen if "_catalog" in url) == 2  # 4 repos, pages of 2
    assert oci.tags("a/one") == ["t1", "t2", "t3"]
    assert oci.tags("gone") == []  # "tags": null
    assert oci.tags("never-existed") == []
    assert OciRegistry(registry.url, repositories=["a/*"]).repositories() == ["a/one", "a/two"]
    session.seen.clear()
    named = OciRegistry(registry.url, repositories=["b/three", "a/one"], session=session)
    assert named.repositories() == ["a/one", "b/three"]
    assert session.seen == []  # named repositories need no catalog


def test_images_resolve_tags_children_sizes_and_build_times(registry: Registry) -> None:
    amd = registry.push_image("ml/train", tag=None, created=NOW - timedelta(days=50),
                              layers=[b"a" * 100, b"b" * 50])
    arm = registry.push_image("ml/train", tag="arm-only", created=NOW - timedelta(days=40),
                              arch="arm64", layers=[b"c" * 70])
    index = registry.push_index("ml/train", tag="multi", children=[amd, arm])
    registry.tag(index, "also-multi")
    annotated = registry.push_image("ml/train", tag="annotated", created=NOW,
                                    annotations={"org.opencontainers.image.created":
                                                 "2026-01-02T03:04:05.123456789Z"})
    oci = OciRegistry(registry.url)

    facts = {f.digest: f for f in oci.images("ml/train")}

    assert set(facts) == {amd.digest, arm.digest, index.digest, annotated.digest}
    assert facts[index.digest].tags == ("also-multi", "multi")
    assert facts[index.digest].media_type == OCI_INDEX
    assert facts[index.digest].children == (amd.digest, arm.digest)
    assert facts[index.digest].size_bytes == amd.content_bytes + arm.content_bytes
    assert facts[amd.digest].tags == ()
    assert facts[arm.digest].tags == ("arm-only",)
    assert facts[amd.digest].size_bytes == amd.content_bytes
    assert facts[amd.digest].created_at == NOW - timedelta(days=50)
    assert facts[index.digest].created_at == NOW - timedelta(days=40)  # the newest child
    assert facts[annotated.digest].created_at is not None
    assert facts[annotated.digest].created_at.isoformat() == "2026-01-02T03:04:05.123456+00:00"
    assert facts[annotated.digest].pushed_at is None
    assert facts[annotated.digest].last_pulled_at is None


def test_manifests_and_configs_are_read_once_per_digest(registry: Registry) -> None:
    registry.push_image("ml/train", tag="v1", created=NOW)
    session = CountingSession()
    oci = OciRegistry(registry.url, session=session)
    oci.images("ml/train")
    first = list(session.seen)
    session.seen.clear()
    oci.images("ml/train")
    assert [m for m, _ in first] == ["GET", "HEAD", "GET", "GET"]  # tags, tag, manifest, config
    assert [m for m, _ in session.seen] == ["GET", "HEAD"]  # the tag may have moved: re-read


def test_delete_by_digest_and_put_back(registry: Registry) -> None:
    pushed = registry.push_image("ml/train", tag="v1", created=NOW)
    oci = OciRegistry(registry.url)
    manifest = oci.manifest("ml/train", pushed.digest)
    assert manifest is not None and manifest.digest == pushed.digest

    oci.delete("ml/train", [pushed.digest])
    assert not registry.exists("ml/train", pushed.digest)
    oci.delete("ml/train", [pushed.digest])  # already gone: success
    assert oci.manifest("ml/train", pushed.digest) is None

    # Until the registry's garbage collection runs, the blobs are there to push it back.
    oci.put_manifest("ml/train", manifest, tag="v1")
    assert registry.exists("ml/train", "v1")
    assert oci.resolve("ml/train", "v1") == (pushed.digest, pushed.media_type)


@pytest.fixture(scope="module", params=["basic", "token"])
def secured(request: pytest.FixtureRequest) -> Iterator[Registry]:
    with running_registry(auth=request.param) as server:
        yield server


def test_authentication(secured: Registry) -> None:
    pushed = secured.push_image("team/model", tag="v1", created=NOW)
    anonymous = OciRegistry(secured.url)
    with pytest.raises(RegistryError) as caught:
        anonymous.repositories()
    assert caught.value.code == "UNAUTHORIZED"
    wrong = OciRegistry(secured.url, credentials=(USERNAME, "wrong"))
    with pytest.raises(RegistryError, match=r"401|token endpoint"):
        wrong.tags("team/model")

    oci = OciRegistry(secured.url, credentials=(USERNAME, PASSWORD))
    assert "team/model" in oci.repositories()
    assert [f.digest for f in oci.images("team/model")] == [pushed.digest]
    oci.delete("team/model", [pushed.digest])
    assert not secured.exists("team/model", pushed.digest)
    if secured.token_server is not None:
        scopes = [r["scope"] for r in secured.token_server.requests
                  if any("team/model:pull" in s or "team/model:delete" in s
                         for s in r["scope"])]
        # The delete asked for more access: the new token keeps pull as well.
        assert ["repository:team/model:delete", "repository:team/model:pull"] in scopes
