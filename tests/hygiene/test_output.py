"""Plan rendering and the scan progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

from agent.controller.hygiene.output import ProgressBar, render_json, render_table
from tests.hygiene.fakes import Thing, make_rig


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = Tty()
    bar = ProgressBar(stream, clock=iter(range(0, 1000)).__next__)
    bar.start(3, "pods")
    for _ in range(3):
        bar.advance()
    bar.finish()
    text = stream.getvalue()
    assert text.startswith("\r[") and "3/3 pods" in text and text.endswith("\n")


def test_no_bar_for_small_scans_outside_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, large=100)
    bar.start(99, "pods")
    for _ in range(99):
        bar.advance()
    bar.finish()
    assert stream.getvalue() == ""


def test_plain_lines_for_large_scans_outside_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, large=100)
    bar.start(1000, "pods")
    for _ in range(1000):
        bar.advance()
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "100/1000 pods" and lines[-1] == "1000/1000 pods"
    assert len(lines) == 10 and "\r" not in stream.getvalue()


def test_table_and_json(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Deployment/idle": Thing(),
                              "team-a/Deployment/busy": Thing(idle=False, uid="2")})
    outcome = rig.engine().run(apply=False)
    assert outcome.plan is not None
    table = render_table(outcome.plan, outcome).splitlines()
    assert table[2].split() == ["RESOURCE", "ACTION", "DEADLINE", "MARKED", "REASON"]
    assert table[3].split()[:2] == ["team-a/Deployment/idle", "scale_to_zero"]
    assert "team-a/Deployment/busy  in use" in "\n".join(table)
    assert table[-1] == "result: succeeded"
    assert json.loads(render_json(outcome.plan)) == outcome.plan.to_json()
