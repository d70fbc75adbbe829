"""Slack messages as they would look, rendered for a terminal (the demo without a workspace)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import Any

WIDTH = 96


_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<([^|>]+)\|([^>]*)>")
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")


def _plain(text: str) -> str:
    """Slack mrkdwn as a terminal shows it: dates and links as their text, one line."""
    text = _MENTION.sub(r"@\1", _LINK.sub(r"\2", _DATE.sub(r"\1", text)))
    return " ".join(text.split())


def plain_text(text: str) -> str:
    """Slack mrkdwn as a terminal line (dates and links as their text)."""
    return _plain(text)


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
            buttons = [f"[{_text(e)}]" + (f" {e['url']}" if e.get("url") else "")
                       for e in block.get("elements", []) if isinstance(e, dict)]
            lines.extend(f"    {b}" for b in buttons)
        elif kind == "divider":
            lines.append("-" * 40)
    return lines


def header_text(message: Any) -> str:
    """The message's header block (``FIRING:2 GpuXidErrors — node gpu-node-1``), else its
    fallback text."""
    for block in message.blocks:
        if block.get("type") == "header":
            return _text(block)
    return _plain(message.text)[:WIDTH]


def render_message(message: Any, *, channel: str) -> str:
    """A stub-recorded Slack message as first seen, its blocks as they are now."""
    body = render_blocks(message.blocks) or textwrap.wrap(message.text, WIDTH)
    updated = f", updated {len(message.updates)} times so far" if message.updates else ""
    lines = [f"SLACK {channel}: new message{updated}", *(f"   | {line}" for line in body)]
    return "\n".join(lines)


def render_update(message: Any, *, channel: str) -> str:
    """One line: the message was edited in place (what its header says now)."""
    return (f"SLACK {channel}: message updated in place (update {len(message.updates)}): "
            f"{header_text(message)}")


def render_reply(reply: Any, root: Any, *, channel: str) -> str:
    """A thread reply (what changed in the group), under the message it belongs to."""
    body = render_blocks(reply.blocks) or textwrap.wrap(_plain(reply.text), WIDTH)
    lines = [f"SLACK {channel}: thread reply to \"{header_text(root)}\""]
    lines += [f"   |   {line}" for line in body]
    return "\n".join(lines)


def render_html(messages: list[tuple[Any, list[Any]]], *, channel: str = "#gpu-oncall",
                click_url: str | None = None, files: dict[str, bytes] | None = None,
                channel_of: Callable[[str], str] | None = None) -> str:
    """The messages (with their thread replies) as a page that looks like a Slack channel;
    with ``channel_of`` (a message's channel id -> its name), a message posted elsewhere (an
    owner notice in its team's channel) is shown where it was posted. ``click_url``: buttons
    with a value post there (the demo's relay, ``clicks.ChannelPage``); ``files``: uploaded
    files by id, images shown inline."""
    import base64
    import html

    def button_html(element: dict[str, Any], message: Any) -> str:
        label = html.escape(_text(element))
        if "value" not in element:
            return f"<a class=btn href='{html.escape(str(element.get('url', '')))}'>{label}</a>"
        style = " primary" if element.get("style") == "primary" else ""
        if click_url is None:
            return f"<span class='btn{style}'>{label}</span>"
        fields = {"value": element["value"], "channel": message.channel, "ts": message.ts}
        hidden = "".join(f"<input type=hidden name={k} value='{html.escape(str(v))}'>"
                         for k, v in fields.items())
        return (f"<form method=post action='{html.escape(click_url)}' class=inline>{hidden}"
                f"<button class='btn{style}'>{label}</button></form>")

    def files_html(message: Any) -> str:
        shown = []
        for item in getattr(message, "files", None) or []:
            data = (files or {}).get(str(item.get("id")))
            title = html.escape(str(item.get("title") or item.get("name") or ""))
            if data is not None and data.startswith(b"\x89PNG"):
                encoded = base64.b64encode(data).decode()
                shown.append(f"<div class=file><div class=ctx>{title}</div>"
                             f"<img src='data:image/png;base64,{encoded}'></div>")
            else:
                shown.append(f"<div class=ctx>[file {title}]</div>")
        return "".join(shown)

    def rich(text: str) -> str:
        return re.sub(r"\*([^*\n]+)\*", r"<b>\1</b>", html.escape(text))

    def block_html(block: dict[str, Any], message: Any) -> str:
        kind = block.get("type")
        if kind == "header":
            return f"<h3>{rich(_text(block))}</h3>"
        if kind == "section":
            fields = "".join(f"<div class=f>{rich(_text(f))}</div>"
                             for f in block.get("fields") or [])
            body = f"<p>{rich(_text(block))}</p>" if _text(block) else ""
            return body + (f"<div class=fields>{fields}</div>" if fields else "")
        if kind == "context":
            return "<p class=ctx>" + " ".join(html.escape(_text(e))
                                              for e in block.get("elements", [])) + "</p>"
        if kind == "actions":
            return "<div class=btns>" + "".join(
                button_html(e, message)
                for e in block.get("elements", []) if isinstance(e, dict)) + "</div>"
        return "<hr>" if kind == "divider" else ""

    posts = []
    for message, replies in messages:
        body = "".join(block_html(b, message) for b in message.blocks) or \
            f"<p>{html.escape(_plain(message.text))}</p>"
        thread = "".join(
            "<div class=reply>"
            + ("".join(block_html(b, r) for b in r.blocks)
               or (html.escape(_plain(r.text)) if r.text else ""))
            + files_html(r) + "</div>" for r in replies)
        times = len(message.updates)
        edited = (f" <span class=ctx>(edited {times} time{'s' if times > 1 else ''})</span>"
                  if times else "")
        elsewhere = channel_of(message.channel) if channel_of is not None else channel
        where = f" <span class=ctx>in {html.escape(elsewhere)}</span>" \
            if elsewhere != channel else ""
        posts.append(f"<div class=msg><b>Steward</b> <span class=ctx>APP</span>{where}{edited}"
                     f"{body}"
                     f"{thread}</div>")
    style = ("body{font:15px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
             "max-width:820px;margin:16px auto;color:#1d1c1d}.msg{border-bottom:1px solid #ddd;"
             "padding:12px 8px}h3{margin:6px 0}.fields{display:grid;grid-template-columns:1fr 1fr;"
             "gap:4px 16px}.ctx{color:#616061;font-size:13px}.btns{margin:8px 0}"
             ".btn{display:inline-block;border:1px solid #bbb;border-radius:4px;padding:3px 10px;"
             "margin-right:6px;color:#1d1c1d;text-decoration:none;font-weight:600;"
             "background:#fff;font-size:14px;cursor:pointer}.primary{background:#007a5a;"
             "color:#fff;border-color:#007a5a}form.inline{display:inline}"
             ".file img{max-width:100%;border:1px solid #ddd;border-radius:4px}"
             ".reply{margin:6px 0 0 24px;padding-left:8px;border-left:3px solid #ddd;"
             "color:#444;font-size:14px}")
    name = html.escape(channel)
    return (f"<!doctype html><meta charset=utf-8><title>{name}</title><style>{style}"
            f"</style><h2>{name}</h2>{''.join(posts)}")
