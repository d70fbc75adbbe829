"""The stale-images policy, guard by guard, on image facts alone."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from agent.controller.hygiene.images.policy import ImageDecision, ImagePolicy, decide_repository
from agent.controller.hygiene.images.registry import OCI_INDEX, OCI_MANIFEST, ImageFacts
from agent.controller.hygiene.references import ImageReferences, index_images
from tests.hygiene_jobs.conftest import NOW

POLICY = ImagePolicy(min_age=timedelta(days=30), unused_for=timedelta(days=30), keep_newest=2,
                     protected_tags=(re.compile("latest"), re.compile(r"v?\d+\.\d+\.\d+")))
NONE = ImageReferences()


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def image(n: int, *, days: float = 100, tags: tuple[str, ...] = (), pulled_days: float | None
          = None, children: tuple[int, ...] = (), size: int = 10, subject: int | None = None,
          annotations: dict[str, str] | None = None, when: datetime | None = None) -> ImageFacts:
    return ImageFacts(
        repository="ml/train", digest=digest(n), tags=tags,
        media_type=OCI_INDEX if children else OCI_MANIFEST,
        pushed_at=when or NOW - timedelta(days=days), created_at=None,
        last_pulled_at=None if pulled_days is None else NOW - timedelta(days=pulled_days),
        size_bytes=size, children=tuple(digest(c) for c in children),
        subject=digest(subject) if subject is not None else None,
        annotations=annotations or {})


def decide(images: list[ImageFacts], *, refs: ImageReferences = NONE,
           policy: ImagePolicy = POLICY, pulls: bool = True) -> dict[str, ImageDecision]:
    decisions = decide_repository(images, policy=policy, references=refs, now=NOW,
                                  records_pulls=pulls)
    by = {d.image.digest: d for d in decisions}
    assert len(by) == len(decisions), "one decision per image"
    return by


def reasons(by: dict[str, ImageDecision]) -> dict[int, str]:
    return {int(d, 16): ("CANDIDATE" if x.candidate else x.reason)
            for d, x in ((k.removeprefix("sha256:"), v) for k, v in by.items())}


def newest_pair() -> list[ImageFacts]:
    # Two recent images fill "newest 2", so the old ones below are judged on their own.
    return [image(900, days=1, tags=("main",)), image(901, days=2, tags=("dev",))]


def test_every_guard_names_itself() -> None:
    refs = index_images([(f"reg/ml/train@{digest(1)}", "ml/CronJob/nightly"),
                         ("reg.example.com/ml/train:pinned", "ml/Deployment/serve")])
    by = reasons(decide([
        *newest_pair(),
        image(1, tags=("nightly-0801",)),
        image(2, tags=("pinned",)),
        image(3, tags=("v1.2.3",)),
        image(4, tags=("old",), days=10),
        image(5, tags=("pulled",), pulled_days=20),
        image(6, tags=("exempt",), annotations={"steward.io/exempt": "true"}),
        image(7, tags=("stale",), pulled_days=60),
        image(8),  # untagged, old, never pulled
    ], refs=refs))
    assert by == {
        900: "among newest 2", 901: "among newest 2",
        1: "referenced by ml/CronJob/nightly (digest)",
        2: "referenced by ml/Deployment/serve (tag pinned)",
        3: "protected tag v1.2.3",
        4: "pushed 2026-11-12, younger than 30 days",
        5: "pulled 2026-11-02",
        6: "exempt annotation steward.io/exempt=true",
        7: "CANDIDATE", 8: "CANDIDATE",
    }


def test_pull_time_is_trusted_only_a_day_late() -> None:
    # ECR records pulls about daily: 30.5 days ago may really be 29.5; 31.5 is old enough.
    by = reasons(decide([*newest_pair(), image(1, tags=("a",), pulled_days=30.5),
                         image(2, tags=("b",), pulled_days=31.5)]))
    assert by[1].startswith("pulled ") and by[2] == "CANDIDATE"


def test_registries_without_pull_records_ignore_pull_times() -> None:
    by = reasons(decide([*newest_pair(), image(1, tags=("a",), pulled_days=1)], pulls=False))
    assert by[1] == "CANDIDATE"


def test_children_of_a_kept_index_are_kept_and_of_a_stale_index_ride_along() -> None:
    kept_index = image(10, tags=("v2.0.0",), children=(11, 12))
    stale_index = image(20, tags=("old-multi",), children=(21, 22, 11))
    by = decide([*newest_pair(), kept_index, image(11), image(12), stale_index, image(21),
                 image(22)])
    assert reasons(by)[10] == "protected tag v2.0.0"
    assert by[digest(11)].reason == f"child of kept index {digest(10)}"
    assert by[digest(12)].reason == f"child of kept index {digest(10)}"
    assert by[digest(20)].candidate
    # 11 is shared with the kept index: it stays; 21 and 22 go with their index.
    assert set(by[digest(20)].children) == {digest(21), digest(22)}
    assert digest(21) not in by and digest(22) not in by


def test_a_referenced_child_keeps_its_index() -> None:
    refs = index_images([(f"reg/ml/train@{digest(31)}", "ml/Pod/p")])
    by = decide([*newest_pair(), image(30, tags=("multi",), children=(31,)), image(31)],
                refs=refs)
    assert by[digest(30)].reason == "referenced by ml/Pod/p (digest)"
    assert by[digest(31)].reason == f"child of kept index {digest(30)}"


def test_a_tagged_child_of_a_kept_index_is_kept_even_when_stale_itself() -> None:
    by = reasons(decide([*newest_pair(), image(40, tags=("1.0.0",), children=(41,)),
                         image(41, tags=("amd64-old",))]))
    assert by[41] == f"child of kept index {digest(40)}"


def test_signatures_follow_their_image() -> None:
    cosign_tag = f"sha256-{digest(50).removeprefix('sha256:')}.sig"
    by = reasons(decide([*newest_pair(), image(50, tags=("latest",)),
                         image(51, tags=(cosign_tag,)), image(52, subject=50),
                         image(60, tags=("gone",)), image(61, subject=60)]))
    assert by[51] == f"attached to kept image {digest(50)}"
    assert by[52] == f"attached to kept image {digest(50)}"
    assert by[60] == "CANDIDATE" and by[61] == "CANDIDATE"


def test_newest_k_counts_untagged_images_and_unknown_times_as_newest() -> None:
    undated = ImageFacts(repository="ml/train", digest=digest(70), tags=("x",),
                         media_type=OCI_MANIFEST, pushed_at=None, created_at=None,
                         last_pulled_at=None, size_bytes=1)
    by = reasons(decide([undated, image(71, days=200), image(72, days=300),
                         image(73, days=400)]))
    assert by == {70: "among newest 2", 71: "among newest 2", 72: "CANDIDATE",
                  73: "CANDIDATE"}
    policy = ImagePolicy(min_age=POLICY.min_age, unused_for=POLICY.unused_for,
                         keep_newest=0, protected_tags=())
    assert reasons(decide([undated], policy=policy))[70] == "push time unknown"


def test_built_time_is_the_age_where_push_time_is_not_recorded() -> None:
    built = ImageFacts(repository="r", digest=digest(80), tags=("a",), media_type=OCI_MANIFEST,
                       pushed_at=None, created_at=NOW - timedelta(days=3),
                       last_pulled_at=None, size_bytes=1)
    policy = ImagePolicy(min_age=POLICY.min_age, unused_for=POLICY.unused_for, keep_newest=0,
                         protected_tags=())
    decisions = decide_repository([built], policy=policy, references=NONE, now=NOW,
                                  records_pulls=False, age_basis="created")
    assert decisions[0].reason == "created 2026-11-19, younger than 30 days"


def test_candidate_reason_says_why() -> None:
    by = decide([*newest_pair(), image(90, tags=("old",), pulled_days=45)])
    assert by[digest(90)].reason == ("stale image: pushed 2026-08-14, last pulled 2026-10-08, "
                                     "not referenced in the cluster, not among the newest 2")


def test_a_bad_protected_tag_pattern_is_a_config_error() -> None:
    import pytest

    from agent.config import ConfigError, StaleImagesConfig

    with pytest.raises(ConfigError, match="protected_tags: '\\[' is not a regular expression"):
        ImagePolicy.from_config(StaleImagesConfig(protected_tags=["["]))
    assert ImagePolicy.from_config(StaleImagesConfig()).protected_tag(["v1.2.3", "x"]) == "v1.2.3"
