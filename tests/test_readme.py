"""The README keeps its promises: the two commands, every alert, every benchmark."""

from __future__ import annotations

import re
from pathlib import Path

from agent.alerts.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_opens_with_the_two_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "steward demo" in makefile.split("\ndemo:", 1)[1].split("\n\n")[0]
    assert ".ci/run" in README and "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_alert_is_listed_with_its_runbook() -> None:
    for alert in CATALOG:
        link = f"[{alert.name}](runbooks/{alert.name}.md) | {alert.severity}"
        assert link in README, alert.name
        assert (ROOT / "runbooks" / f"{alert.name}.md").is_file()


def test_every_benchmark_and_linked_file_exists() -> None:
    for bench in sorted((ROOT / "bench").glob("*.py")):
        assert f"bench/{bench.name}" in README, bench.name
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
