"""``steward build``: regenerate every committed artefact from its single source.

Alert rules (three formats) from the alert catalog, the FinOps report's hourly recording
rules from its own queries, dashboards JSON from ``dashboards/*.dashboard.py``, the XID
table embedded in the GpuXidCritical runbook and the runbook index (``runbooks/index.json``);
then lint the catalog against the runbooks. Idempotent: files are rewritten only when their
content changes, and ``--check`` writes nothing and lists what is stale (CI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.alerts.lint import lint_catalog
from agent.alerts.render import render_alert_files
from agent.alerts.runbook_index import INDEX_FILE, render_runbook_index
from agent.alerts.xid import with_xid_table
from agent.dashboards.render import render_dashboards
from agent.finops.recording import RULES_FILE, recording_rule_groups, render_recording_rules


class BuildError(Exception):
    """The tree cannot be built (not a Steward checkout, a dashboard fails to load)."""


@dataclass
class BuildResult:
    changed: list[Path] = field(default_factory=list)  # written, or stale under --check
    problems: list[str] = field(default_factory=list)  # lint findings

    @property
    def ok(self) -> bool:
        return not self.problems


def build(root: Path, *, runbook_base_url: str, check: bool = False) -> BuildResult:
    for needed in ("dashboards", "alerts", "runbooks"):
        if not (root / needed).is_dir():
            raise BuildError(f"{root} has no {needed}/ folder: run steward build from the "
                             "repository root or pass --root")
    outputs: dict[Path, str] = {}
    for name, text in render_alert_files(runbook_base_url=runbook_base_url,
                                         recording_groups=recording_rule_groups()).items():
        outputs[root / "alerts" / name] = text
    outputs[root / "alerts" / RULES_FILE] = render_recording_rules()
    try:
        dashboards = render_dashboards(root / "dashboards", runbook_base_url=runbook_base_url)
    except Exception as exc:  # a dashboard source is user-editable Python
        raise BuildError(f"dashboards: {exc}") from exc
    for name, text in dashboards.items():
        outputs[root / "dashboards" / name] = text
    from agent.docs import reference_docs

    for name, text in reference_docs().items():
        outputs[root / "docs" / name] = text
    xid_runbook = root / "runbooks" / "GpuXidCritical.md"
    if xid_runbook.is_file():  # a missing runbook is the lint's finding, below
        try:
            outputs[xid_runbook] = with_xid_table(xid_runbook.read_text(encoding="utf-8"),
                                                  where=str(xid_runbook))
        except ValueError as exc:
            raise BuildError(str(exc)) from exc

    # From the runbooks as they are (the XID table aside, which does not change sections).
    outputs[root / "runbooks" / INDEX_FILE] = render_runbook_index(root / "runbooks")

    result = BuildResult()
    for path, text in sorted(outputs.items()):
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        result.changed.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    # Lint after writing so that a fresh build lints what it wrote.
    result.problems = lint_catalog(runbooks_dir=root / "runbooks")
    result.problems.extend(
        f"{orphan}: no {orphan.name[:-len('.json')]}.dashboard.py source; delete it"
        for orphan in sorted((root / "dashboards").glob("*.json")) if orphan not in outputs)
    return result
