"""How ``steward hygiene run`` shows a plan: SPEC's JSON object, or a table for humans; and
the progress bar of long scans (stderr, never mixed into the plan on stdout)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from agent.controller.hygiene.engine import RunOutcome
from agent.controller.hygiene.plan import Plan, iso_time

_REASON_WIDTH = 90


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=False, default=str)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers), *(line(r) for r in rows)]


def _clip(text: str, width: int = _REASON_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(plan: Plan, outcome: RunOutcome | None = None) -> str:
    lines = [f"hygiene job {plan.job} ({plan.mode}) at {iso_time(plan.started_at)}", ""]
    if plan.candidates:
        lines += _table(["RESOURCE", "ACTION", "DEADLINE", "MARKED", "REASON"], [
            [p.candidate.resource, p.candidate.action, iso_time(p.deadline),
             "yes" if p.marked else "no", _clip(p.candidate.reason)]
            for p in plan.candidates])
    else:
        lines.append("no candidates")
    if plan.skipped:
        lines += ["", f"skipped ({len(plan.skipped)}):"]
        lines += _table(["RESOURCE", "GUARD"], [[s.resource, _clip(s.reason)]
                                               for s in plan.skipped])
    reclaimable = plan.to_json()["reclaimable"]
    summary = ", ".join(f"{v} {k}" for k, v in reclaimable.items())
    lines += ["", f"{len(plan.candidates)} candidates, {len(plan.skipped)} skipped, "
                  f"reclaimable: {summary}"]
    if outcome is not None:
        done = [a for a in outcome.actions if a.status == "done"]
        if done:
            lines += ["", "actions:"] + [f"  {a.action} {a.resource}" for a in done]
        result = f"result: {outcome.result}"
        lines.append(result + (f" ({outcome.reason})" if outcome.reason else ""))
    return "\n".join(lines)


class ProgressBar:
    """A one-line bar when ``stream`` is a terminal; otherwise, for large scans only, a plain
    line every tenth of the way (logs must not fill with carriage returns)."""

    def __init__(self, stream: TextIO | None = None, *, large: int = 500, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._large = large
        self._width = width
        self._clock = clock
        self._total = 0
        self._done = 0
        self._what = ""
        self._shown = False
        self._next_step = 0
        self._last_draw = 0.0

    @property
    def visible(self) -> bool:
        return self._tty or self._total >= self._large

    def start(self, total: int, what: str) -> None:
        self._total, self._done, self._what = total, 0, what
        self._next_step = max(1, total // 10)
        self._shown = False

    def advance(self, count: int = 1) -> None:
        self._done += count
        if not self.visible:
            return
        if self._tty:
            now = self._clock()
            if now - self._last_draw >= 0.1 or self._done >= self._total:
                self._last_draw = now
                filled = int(self._width * self._done / max(1, self._total))
                bar = "#" * filled + "-" * (self._width - filled)
                self._stream.write(f"\r[{bar}] {self._done}/{self._total} {self._what}")
                self._stream.flush()
                self._shown = True
        elif self._done >= self._next_step or self._done >= self._total:
            self._next_step = self._done + max(1, self._total // 10)
            self._stream.write(f"{self._done}/{self._total} {self._what}\n")
            self._stream.flush()

    def finish(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = False
