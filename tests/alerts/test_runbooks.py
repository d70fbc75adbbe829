"""Runbooks: one per catalog alert, with front matter, the five sections and working links.

The checks are small functions over text and paths, so that each one is also tested here on
a bad runbook and can be seen to fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from agent.alerts.catalog import CATALOG, SEVERITIES, Alert
from agent.alerts.xid import embedded_xid_table, render_xid_table_markdown
from agent.config import StewardConfig
from agent.links import DASHBOARD_UIDS
from tests.support.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_DIR = ROOT / "runbooks"
INDEX_NAME = "README.md"
REQUIRED_SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation", "Escalation")

# Label names a runbook may use as a `{{ label }}` placeholder: the contract's labels
# (SPEC.md, with `hygiene_job` instead of `job` on hygiene metrics), Prometheus' target
# labels, and the labels the catalog adds (`action`, `routing`).
KNOWN_LABELS = frozenset({
    "hostname", "gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_ID",
    "GPU_I_PROFILE", "driver_version", "mig_mode", "reason", "type", "state", "xid",
    "namespace", "pod", "container", "phase", "collector", "error", "pipeline", "kind",
    "result", "hygiene_job", "action", "mode", "unit", "job", "instance", "routing",
    "workload_kind", "workload", "team", "resource", "health",
})

# Every `steward_*` metric of the contract (SPEC.md plus the FinOps price metric), so that a
# runbook cannot send the on-call engineer to a series that does not exist.
KNOWN_METRICS = frozenset({
    "steward_gpu_info", "steward_gpu_up", "steward_gpu_lost", "steward_gpu_utilization_ratio",
    "steward_gpu_memory_copy_utilization_ratio", "steward_gpu_memory_used_bytes",
    "steward_gpu_memory_total_bytes", "steward_gpu_temperature_celsius",
    "steward_gpu_power_watts", "steward_gpu_power_limit_watts",
    "steward_gpu_energy_joules_total", "steward_gpu_sm_clock_hertz",
    "steward_gpu_clock_event_active", "steward_gpu_ecc_errors_total",
    "steward_gpu_remapped_rows", "steward_gpu_xid_errors_total",
    "steward_gpu_xid_last_timestamp_seconds", "steward_gpu_allocation",
    "steward_gpu_pod_memory_used_bytes", "steward_gpu_price_dollars_per_hour",
    "steward_pod_phase", "steward_pod_gpu_requested", "steward_container_restarts",
    "steward_container_waiting", "steward_container_last_terminated_timestamp_seconds",
    "steward_collector_up", "steward_collector_duration_seconds",
    "steward_collector_errors_total", "steward_pipeline_runs_total",
    "steward_pipeline_last_success_timestamp_seconds", "steward_pipeline_last_duration_seconds",
    "steward_pipeline_running_since_timestamp_seconds",
    "steward_pod_pending_since_timestamp_seconds", "steward_hygiene_runs_total",
    "steward_hygiene_last_success_timestamp_seconds", "steward_hygiene_candidates",
    "steward_hygiene_actions_total", "steward_hygiene_reclaimable",
    "steward_notifier_alerts_received_total", "steward_notifier_slack_messages_total",
    "steward_notifier_outbox_depth", "steward_state_store_created_timestamp_seconds",
    "steward_notifier_dead_letters_total", "steward_notifier_dead_letters_stored",
    "steward_pod_workload_info", "steward_pod_device_health", "steward_namespace_team_info",
    "steward_node_cordoned", "steward_node_quarantined", "steward_node_remediation_taint",
})
# The section the owner notice links to, in the runbook of every alert that names owners.
OWNER_SECTION = "If you own the workload"

_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_LINK_RE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# A trailing `*` is a family in prose (`steward_gpu_*`), not a metric name.
_METRIC_RE = re.compile(r"\bsteward_[a-z0-9_]+(?![\w*])")
_ORDERED_ITEM_RE = re.compile(r"^\s{0,3}\d+\.\s+\S", re.MULTILINE)


# --- parsing ---------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[dict[str, object] | None, str]:
    """(front matter mapping or None, body). Front matter must open the file."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, text
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            try:
                data = yaml.safe_load("".join(lines[1:index]))
            except yaml.YAMLError:
                return None, text
            body = "".join(lines[index + 1:])
            return (data if isinstance(data, dict) else None), body
    return None, text


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks; inline code left as is."""
    out: list[tuple[int, str]] = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((number, line))
    return out


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return "\n".join(_INLINE_CODE_RE.sub("", line) for _, line in prose_lines(text))


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line number, level, title) of every markdown heading outside code blocks."""
    found = []
    for number, line in prose_lines(text):
        match = _HEADING_RE.match(line)
        if match:
            found.append((number, len(match.group(1)), match.group(2)))
    return found


def sections(text: str) -> dict[str, str]:
    """Level-2 section title -> its content up to the next level-1 or level-2 heading."""
    lines = text.splitlines()
    marks = [(number, level, title) for number, level, title in headings(text) if level <= 2]
    out: dict[str, str] = {}
    for index, (number, level, title) in enumerate(marks):
        if level != 2:
            continue
        end = marks[index + 1][0] - 1 if index + 1 < len(marks) else len(lines)
        out[title] = "\n".join(lines[number:end])
    return out


def fenced_blocks(text: str, *, lang: str) -> list[str]:
    """Contents of the fenced code blocks tagged ``lang`` (indentation removed)."""
    blocks: list[str] = []
    current: list[str] | None = None
    indent = 0
    for line in text.splitlines():
        stripped = line.lstrip()
        if current is None:
            if stripped.startswith(("```", "~~~")) and stripped[3:].strip() == lang:
                current, indent = [], len(line) - len(stripped)
        elif stripped.startswith(("```", "~~~")):
            blocks.append("\n".join(current))
            current = None
        else:
            current.append(line[indent:] if line[:indent].isspace() else line.lstrip())
    return blocks


def github_anchor(title: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, _, title in headings(text):
        base = github_anchor(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(text: str) -> list[str]:
    """Targets of inline links and reference definitions that are not URLs, outside code."""
    body = prose(text)
    targets = _LINK_RE.findall(body) + _REF_DEF_RE.findall(body)
    return [t for t in targets if not _SCHEME_RE.match(t) and not t.startswith("//")]


# --- checks: each returns a list of problems, empty when fine -------------------------


def link_problems(path: Path, text: str) -> list[str]:
    """Relative links of ``text`` (the file at ``path``) to missing files or anchors."""
    problems = []
    for target in relative_links(text):
        file_part, _, anchor = target.partition("#")
        target_path = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not target_path.exists():
            problems.append(f"{path.name}: link to missing file {target!r}")
            continue
        if anchor:
            if target_path.suffix != ".md" or target_path.is_dir():
                problems.append(f"{path.name}: anchor on a non-markdown target {target!r}")
            elif anchor not in anchors(target_path.read_text(encoding="utf-8")):
                problems.append(f"{path.name}: link to missing anchor {target!r}")
    return problems


def runbook_problems(text: str, *, alert: str, severity: str,
                     dashboard_uid: str | None = None, owners: bool = False) -> list[str]:
    """Front matter, title, summary, the five sections and their expected content."""
    problems: list[str] = []
    front, body = split_front_matter(text)
    if front is None:
        return [f"{alert}: no front matter (--- alert/severity ---) at the top"]
    if front.get("alert") != alert:
        problems.append(f"{alert}: front matter alert is {front.get('alert')!r}")
    if front.get("severity") != severity:
        problems.append(
            f"{alert}: front matter severity is {front.get('severity')!r}, the rule says "
            f"{severity!r}"
        )

    titles = headings(body)
    if not titles or titles[0][1:] != (1, alert):
        problems.append(f"{alert}: the first heading must be '# {alert}'")
    found = sections(body)
    first_section = next((n for n, level, _ in titles if level == 2), None)
    if titles and first_section is not None:
        summary = "\n".join(body.splitlines()[titles[0][0]:first_section - 1])
        if not summary.strip():
            problems.append(f"{alert}: no summary paragraph under the title")

    present = [title for title in found if title in REQUIRED_SECTIONS]
    for name in REQUIRED_SECTIONS:
        if name not in found:
            problems.append(f"{alert}: missing section '## {name}'")
        elif not re.sub(r"<!--.*?-->", "", found[name], flags=re.DOTALL).strip():
            problems.append(f"{alert}: section '## {name}' is empty")
    if present != [name for name in REQUIRED_SECTIONS if name in found]:
        problems.append(f"{alert}: sections out of order: {present}")

    diagnosis = found.get("Diagnosis", "")
    if dashboard_uid is not None and f"`{dashboard_uid}`" not in diagnosis:
        problems.append(f"{alert}: Diagnosis does not name its dashboard uid `{dashboard_uid}`")
    if not any(_METRIC_RE.search(b) or "up{" in b
               for b in fenced_blocks(diagnosis, lang="promql")):
        problems.append(f"{alert}: Diagnosis has no ```promql block querying Steward's metrics")
    if not fenced_blocks(diagnosis, lang="sh"):
        problems.append(f"{alert}: Diagnosis has no ```sh block (kubectl / nvidia-smi)")
    mitigation = found.get("Mitigation", "")
    if not _ORDERED_ITEM_RE.search(mitigation):
        problems.append(f"{alert}: Mitigation has no ordered steps")
    if "silenc" not in mitigation.lower():
        problems.append(f"{alert}: Mitigation does not say when silencing is safe")
    if owners:
        problems.extend(f"{alert}: {p}" for p in owner_section_problems(found))
    problems.extend(f"{alert}: {p}" for p in vocabulary_problems(text))
    problems.extend(f"{alert}: {p}" for p in config_key_problems(text))
    return problems


def owner_section_problems(found: dict[str, str]) -> list[str]:
    """The workload owner's section: there, after Escalation, with steps, naming the
    workload (the notice sends its team here)."""
    section = found.get(OWNER_SECTION)
    if section is None:
        return [f"missing section '## {OWNER_SECTION}'"]
    problems = []
    titles = list(found)
    if "Escalation" in found and titles.index(OWNER_SECTION) < titles.index("Escalation"):
        problems.append(f"'## {OWNER_SECTION}' must come after Escalation")
    if not _ORDERED_ITEM_RE.search(section):
        problems.append(f"'## {OWNER_SECTION}' has no ordered steps")
    if "{{ workload }}" not in section:
        problems.append(f"'## {OWNER_SECTION}' does not name the workload ({{{{ workload }}}})")
    return problems


def vocabulary_problems(text: str) -> list[str]:
    """Placeholders that are not label names, metrics and dashboards that do not exist."""
    problems = []
    for name in sorted(set(_PLACEHOLDER_RE.findall(text))):
        if name not in KNOWN_LABELS:
            problems.append(f"placeholder {{{{ {name} }}}} is not a known label name")
    for metric in sorted(set(_METRIC_RE.findall(text))):
        if metric not in KNOWN_METRICS:
            problems.append(f"unknown metric {metric}")
    for uid in sorted(set(re.findall(r"`(steward-[a-z-]+)`", text))):
        if uid.startswith(("steward-node", "steward-controller", "steward-notifier")):
            continue  # scrape jobs and workloads, not dashboards
        if uid not in DASHBOARD_UIDS:
            problems.append(f"unknown dashboard uid `{uid}`")
    return problems


def config_key_problems(text: str, *, model: type[BaseModel] = StewardConfig) -> list[str]:
    """Config keys (`section.key`, `STEWARD_SECTION__KEY`) that the config model lacks.

    Only keys under a section the model has are checked, so that a runbook may describe a
    section that is still being built; once the section exists, every key must match it.
    """
    keys = [m.split(":")[0].strip() for m in re.findall(r"`([a-z_]+\.[^`\s][^`]*)`", text)]
    keys += [m.lower().replace("__", ".") for m in re.findall(r"\bSTEWARD_([A-Z0-9_]+)", text)]
    problems = []
    for key in sorted(set(keys)):
        parts = re.sub(r"\{\{[^}]*\}\}|<[^>]*>", "*", key).split(".")
        if parts[0] not in model.model_fields or not all(
            re.fullmatch(r"[a-z_*-]+", part) for part in parts
        ):
            continue
        if not _resolves(model, parts):
            problems.append(f"config key {key} does not exist in {model.__name__}")
    return problems


def _resolves(annotation: object, parts: list[str]) -> bool:
    if not parts:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_resolves(arg, parts) for arg in typing.get_args(annotation))
    if origin is dict:
        return _resolves(typing.get_args(annotation)[1], parts[1:])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields
        if parts[0] == "*":  # a placeholder: any sub-section will do
            return any(_resolves(f.annotation, parts[1:]) for f in fields.values())
        named = {alias: f for f in fields.values() if (alias := f.alias)} | fields
        return parts[0] in named and _resolves(named[parts[0]].annotation, parts[1:])
    return False


def coverage_problems(runbooks: set[str], alerts: set[str]) -> list[str]:
    return [f"alert {name} has no runbooks/{name}.md" for name in sorted(alerts - runbooks)] + [
        f"runbooks/{name}.md has no alert in the catalog" for name in sorted(runbooks - alerts)
    ]


def index_problems(text: str, alerts: dict[str, str]) -> list[str]:
    """Every alert has an index row: a link to its runbook and its severity."""
    problems = []
    for name, severity in alerts.items():
        row = re.search(
            rf"^\|\s*\[{re.escape(name)}\]\({re.escape(name)}\.md\)\s*\|\s*(\w+)\s*\|\s*\S",
            text, re.MULTILINE,
        )
        if row is None:
            problems.append(f"index: no row linking {name}.md with a description")
        elif row.group(1) != severity:
            problems.append(f"index: {name} listed as {row.group(1)}, the rule says {severity}")
    return problems


# --- the real runbooks -----------------------------------------------------------------


def runbook_paths() -> list[Path]:
    return sorted(p for p in RUNBOOK_DIR.glob("*.md") if p.name != INDEX_NAME)


def _alert_id(alert: Alert) -> str:
    return alert.name


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    assert len(CATALOG) >= 21
    problems = coverage_problems({p.stem for p in runbook_paths()}, {a.name for a in CATALOG})
    assert problems == []


@pytest.mark.parametrize("alert", CATALOG, ids=_alert_id)
def test_runbook_matches_its_alert(alert: Alert) -> None:
    assert alert.severity in SEVERITIES
    path = RUNBOOK_DIR / f"{alert.name}.md"
    if not path.exists():
        pytest.fail(f"runbooks/{alert.name}.md is missing")
    problems = runbook_problems(path.read_text(encoding="utf-8"), alert=alert.name,
                                severity=alert.severity, dashboard_uid=alert.dashboard_uid,
                                owners=alert.owners)
    assert problems == []


@pytest.mark.parametrize("path", sorted(RUNBOOK_DIR.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    assert link_problems(path, path.read_text(encoding="utf-8")) == []


def test_index_lists_every_alert_with_its_severity() -> None:
    text = (RUNBOOK_DIR / INDEX_NAME).read_text(encoding="utf-8")
    assert index_problems(text, {a.name: a.severity for a in CATALOG}) == []
    assert vocabulary_problems(text) == []


def test_xid_table_matches_the_xid_module() -> None:
    text = (RUNBOOK_DIR / "GpuXidCritical.md").read_text(encoding="utf-8")
    assert embedded_xid_table(text) == render_xid_table_markdown().strip()


def test_every_promql_snippet_parses(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    groups = []
    for path in runbook_paths():
        snippets = [s for block in fenced_blocks(path.read_text(encoding="utf-8"), lang="promql")
                    for s in promql_expressions(block)]
        rules = [{"record": f"runbook:snippet_{n}", "expr": expr}
                 for n, expr in enumerate(snippets, start=1)]
        groups.append({"name": path.name, "rules": rules})
    assert sum(len(g["rules"]) for g in groups) >= len(CATALOG) * 2
    rules_file = tmp_path / "runbook-snippets.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def promql_expressions(block: str) -> list[str]:
    """Split a promql block into expressions: a line indented deeper continues the one above.

    Whole-line comments are dropped; trailing `# ...` comments stay (PromQL allows them).
    """
    expressions: list[list[str]] = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if expressions and line.startswith((" ", "\t")):
            expressions[-1].append(line)
        else:
            expressions.append([line])
    return ["\n".join(lines) for lines in expressions]


# --- the checks themselves, on bad input -----------------------------------------------

GOOD = """\
---
alert: GpuLost
severity: critical
---
# GpuLost

A GPU fell off the bus.

## Meaning

`steward_gpu_lost == 1` on `{{ hostname }}`.

## Impact

Jobs die.

## Diagnosis

GPU node detail, uid `steward-gpu-node`.

```promql
steward_gpu_lost{hostname="{{ hostname }}"}
```

```sh
kubectl cordon {{ hostname }}
```

## Mitigation

1. Cordon. Silencing: safe once cordoned, for 24 h.

## Escalation

Platform on-call; see [the index](README.md#index).
"""


def test_checker_accepts_a_good_runbook() -> None:
    assert runbook_problems(GOOD, alert="GpuLost", severity="critical",
                            dashboard_uid="steward-gpu-node") == []


@pytest.mark.parametrize(("bad", "expected"), [
    (GOOD.replace("---\nalert: GpuLost\nseverity: critical\n---\n", ""), "no front matter"),
    (GOOD.replace("severity: critical", "severity: warning"), "severity is 'warning'"),
    (GOOD.replace("alert: GpuLost", "alert: GpuGone"), "alert is 'GpuGone'"),
    (GOOD.replace("# GpuLost\n", "# Gpu lost\n"), "first heading"),
    (GOOD.replace("A GPU fell off the bus.\n", ""), "no summary"),
    (GOOD.replace("## Impact\n\nJobs die.\n", ""), "missing section '## Impact'"),
    (GOOD.replace("Jobs die.", "<!-- todo -->"), "'## Impact' is empty"),
    (GOOD.replace("## Escalation", "## Escalations"), "missing section '## Escalation'"),
    (GOOD.replace("uid `steward-gpu-node`", "the node dashboard"), "dashboard uid"),
    (GOOD.replace("```promql", "```text"), "no ```promql block"),
    (GOOD.replace("```sh", "```text"), "no ```sh block"),
    (GOOD.replace("1. Cordon.", "Cordon."), "no ordered steps"),
    (GOOD.replace("Silencing: safe once cordoned, for 24 h.", ""), "silencing"),
    (GOOD.replace("{{ hostname }}\"}", "{{ host }}\"}"), "{{ host }} is not a known label"),
    (GOOD.replace("steward_gpu_lost{", "steward_gpu_gone{"), "unknown metric steward_gpu_gone"),
    (GOOD.replace("uid `steward-gpu-node`", "uid `steward-gpu-nodes`"), "unknown dashboard uid"),
])
def test_checker_rejects_a_bad_runbook(bad: str, expected: str) -> None:
    problems = runbook_problems(bad, alert="GpuLost", severity="critical",
                                dashboard_uid="steward-gpu-node")
    assert any(expected in problem for problem in problems), problems


OWNED = GOOD + """
## If you own the workload

Your job `{{ namespace }}/{{ workload }}` was on the GPU.

1. Restart from the last checkpoint.
"""


def test_owner_section_is_required_of_alerts_that_carry_owners() -> None:
    assert runbook_problems(OWNED, alert="GpuLost", severity="critical",
                            dashboard_uid="steward-gpu-node", owners=True) == []
    missing = runbook_problems(GOOD, alert="GpuLost", severity="critical",
                               dashboard_uid="steward-gpu-node", owners=True)
    assert any("missing section '## If you own the workload'" in p for p in missing), missing
    steps = runbook_problems(OWNED.replace("1. Restart", "Restart"), alert="GpuLost",
                             severity="critical", owners=True)
    assert any("has no ordered steps" in p for p in steps), steps
    unnamed = runbook_problems(OWNED.replace("{{ workload }}", "it"), alert="GpuLost",
                               severity="critical", owners=True)
    assert any("does not name the workload" in p for p in unnamed), unnamed
    before = OWNED.replace("## Escalation\n", "## Escalation_\n").replace(
        "## If you own the workload", "## Escalation")
    before = before.replace("## Escalation_\n", "## If you own the workload\n")
    early = runbook_problems(before, alert="GpuLost", severity="critical", owners=True)
    assert any("must come after Escalation" in p for p in early), early


def test_runbook_index_lists_every_alert_as_built() -> None:
    from agent.alerts.runbook_index import INDEX_FILE, render_runbook_index

    index = RUNBOOK_DIR / INDEX_FILE
    assert index.read_text(encoding="utf-8") == render_runbook_index(RUNBOOK_DIR)
    entries = json.loads(index.read_text(encoding="utf-8"))
    assert [e["alert"] for e in entries] == [a.name for a in CATALOG]
    for entry, alert in zip(entries, CATALOG, strict=True):
        assert (entry["severity"], entry["summary"]) == (alert.severity, alert.summary)
        assert (RUNBOOK_DIR / entry["file"]).is_file()
        titles = [s["title"] for s in entry["sections"]]
        assert [t for t in titles if t in REQUIRED_SECTIONS] == list(REQUIRED_SECTIONS)
        assert (OWNER_SECTION in titles) is alert.owners
        anchors_of_file = anchors((RUNBOOK_DIR / entry["file"]).read_text(encoding="utf-8"))
        assert all(s["anchor"] in anchors_of_file for s in entry["sections"])


def test_checker_rejects_sections_out_of_order() -> None:
    swapped = GOOD.replace("## Meaning", "## TMP").replace("## Impact", "## Meaning")
    swapped = swapped.replace("## TMP", "## Impact")
    problems = runbook_problems(swapped, alert="GpuLost", severity="critical")
    assert any("out of order" in p for p in problems), problems


def test_headings_inside_code_blocks_are_not_sections() -> None:
    text = GOOD.replace("kubectl cordon {{ hostname }}", "## Escalation\nkubectl cordon")
    text = text.replace("## Escalation\n\nPlatform", "## Notes\n\nPlatform")
    problems = runbook_problems(text, alert="GpuLost", severity="critical")
    assert any("missing section '## Escalation'" in p for p in problems), problems


class _Job(BaseModel):
    max_actions: int = 10


class _Hygiene(BaseModel):
    kill_switch: bool = False
    idle_gpus: _Job = _Job()


class _Node(BaseModel):
    collect_interval_seconds: float = 10.0


class _Config(BaseModel):
    node: _Node = _Node()
    hygiene: _Hygiene = _Hygiene()
    teams: dict[str, _Job] = {}


def test_config_keys_must_exist_in_the_config_model() -> None:
    good = ("`node.collect_interval_seconds: 30` `hygiene.kill_switch` "
            "`hygiene.{{ hygiene_job }}.max_actions` `hygiene.<job>.max_actions` "
            "`teams.ml.max_actions` STEWARD_NODE__COLLECT_INTERVAL_SECONDS=30 "
            "`nvidia.com/gpu` `plan.json` `steward.io/exempt=true`")
    assert config_key_problems(good, model=_Config) == []
    bad = ("`node.collect_interval` `hygiene.killswitch: true` "
           "`hygiene.{{ hygiene_job }}.max_percent` STEWARD_NODE__INTERVAL=5")
    assert config_key_problems(bad, model=_Config) == [
        "config key hygiene.killswitch does not exist in _Config",
        "config key hygiene.{{ hygiene_job }}.max_percent does not exist in _Config",
        "config key node.collect_interval does not exist in _Config",
        "config key node.interval does not exist in _Config",
    ]


def test_coverage_names_both_directions() -> None:
    problems = coverage_problems({"GpuLost", "OldAlert"}, {"GpuLost", "NewAlert"})
    assert problems == ["alert NewAlert has no runbooks/NewAlert.md",
                        "runbooks/OldAlert.md has no alert in the catalog"]


def test_link_checker_on_files_written_to_disk(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Runbooks\n\n## Index\n\n## Cordon, drain, uncordon\n",
                                        encoding="utf-8")
    good = tmp_path / "GpuLost.md"
    good.write_text(
        "[i](README.md#index) [c](README.md#cordon-drain-uncordon) [s](#gpulost)\n"
        "[web](https://example.com/x.md) `[not](a-link.md)`\n"
        "```sh\n[also not](inside-a-block.md)\n```\n# GpuLost\n",
        encoding="utf-8",
    )
    assert link_problems(good, good.read_text(encoding="utf-8")) == []

    bad = tmp_path / "GpuGone.md"
    bad.write_text(
        "# GpuGone\n[a](Missing.md) [b](README.md#no-such-heading) [c](#nowhere)\n"
        "[ref]: ../dashboards/none.json\n",
        encoding="utf-8",
    )
    problems = link_problems(bad, bad.read_text(encoding="utf-8"))
    assert problems == [
        "GpuGone.md: link to missing file 'Missing.md'",
        "GpuGone.md: link to missing anchor 'README.md#no-such-heading'",
        "GpuGone.md: link to missing anchor '#nowhere'",
        "GpuGone.md: link to missing file '../dashboards/none.json'",
    ]


def test_duplicate_headings_get_numbered_anchors() -> None:
    assert anchors("## Steps\n## Steps\n### `reset-gpu`\n") == {"steps", "steps-1", "reset-gpu"}


def test_index_checker_rejects_missing_and_wrong_rows() -> None:
    text = "| [GpuLost](GpuLost.md) | warning | gone |\n"
    problems = index_problems(text, {"GpuLost": "critical", "GpuXidCritical": "critical"})
    assert problems == ["index: GpuLost listed as warning, the rule says critical",
                        "index: no row linking GpuXidCritical.md with a description"]


def test_promql_block_splitting() -> None:
    block = "# a comment\nsum(a)\n  / sum(b)   # trailing\n\nup == 0\n"
    assert promql_expressions(block) == ["sum(a)\n  / sum(b)   # trailing", "up == 0"]
