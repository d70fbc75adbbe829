"""The Dockerfile builds the image the chart runs: the chart's non-root UID is the image's
numeric USER, the base is pinned to an exact release, and the build context has what the
Dockerfile copies. (No Docker daemon here: the build itself runs in the release pipeline.)"""

from __future__ import annotations

import fnmatch
import re

import yaml

from tests.helm.chart import CHART, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_multi_stage_with_a_pinned_base() -> None:
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    # An exact patch release (or a digest), never a floating tag such as 3.11-slim.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", DOCKERFILE, flags=re.MULTILINE)
    assert [image for image, _ in stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert stages[0][1] == "build"
    assert "COPY --from=build /opt/steward /opt/steward" in DOCKERFILE


def test_runs_as_the_charts_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.MULTILINE)
    # Numeric, so that the kubelet can check runAsNonRoot without /etc/passwd.
    assert users == ["65532:65532"]
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    ids = values["securityContext"]
    assert f"{ids['runAsUser']}:{ids['runAsGroup']}" == users[0]
    assert re.search(r'^ENTRYPOINT \["steward"\]$', DOCKERFILE, flags=re.MULTILINE)


def test_build_context_has_what_the_dockerfile_copies() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE)
    sources = [s for line in copied for s in line.split()]
    assert sources == ["pyproject.toml", "README.md", "agent"]
    for source in sources:
        assert (ROOT / source).exists()
        assert included(source), source
    assert included("agent/cli.py")
    assert not included("tests/test_cli.py") and not included(".venv/bin/python")
