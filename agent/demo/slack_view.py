"""Slack messages as they would look, rendered for a terminal (the demo without a workspace)."""

from __future__ import annotations

import re
import textwrap
from typing import Any

WIDTH = 96


_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<([^|>]+)\|([^>]*)>")


def _plain(text: str) -> str:
    """Slack mrkdwn as a terminal shows it: dates and links as their text, one line."""
    text = _LINK.sub(r"\2", _DATE.sub(r"\1", text))
    return " ".join(text.split())


def _text(element: Any) -> str:
    if isinstance(element, dict):
        if isinstance(element.get("text"), dict):
            return _plain(str(element["text"].get("text", "")))
        return _plain(str(element.get("text", "")))
    return ""


def render_blocks(blocks: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"## {_text(block)}")
        elif kind == "section":
            if _text(block):
                lines.extend(textwrap.wrap(_text(block), WIDTH) or [""])
            fields = [_text(f) for f in block.get("fields") or []]
            if fields:
                lines.append("  " + "  |  ".join(fields))
        elif kind == "context":
            lines.append("  " + "  ".join(_text(e) for e in block.get("elements", [])))
        elif kind == "actions":
            buttons = [f"[{_text(e)}] {e.get('url', '')}" for e in block.get("elements", [])
                       if isinstance(e, dict)]
            lines.extend(f"    {b}" for b in buttons)
        elif kind == "divider":
            lines.append("-" * 40)
    return lines


def render_message(message: Any, *, replies: list[Any] | None = None) -> str:
    """A stub-recorded Slack message, updated in place, with its thread replies."""
    body = render_blocks(message.blocks) or textwrap.wrap(message.text, WIDTH)
    head = f"   SLACK {message.channel} (message {message.ts}, {len(message.updates)} updates)"
    lines = [head, *(f"   | {line}" for line in body)]
    for reply in replies or []:
        lines.append(f"   |   thread: {reply.text[:WIDTH]}")
    return "\n".join(lines)
