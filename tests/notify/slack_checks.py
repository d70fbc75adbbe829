"""What no Slack call the notifier makes may contain, whatever the webhook held: an active
mention, a link (or a URL Slack would link) to a host nobody configured."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from agent.sim.slack_stub import Call

# <!channel>, <!here>, <!everyone>, <!subteam^…>, <@U…>, <#C…>: only <!date^…> is ours.
ACTIVE = re.compile(r"<(?!!date\^)[!@#]")
# A broadcast word Slack might act on; ours always carry an invisible space after '@'.
BROADCAST = re.compile(r"@(?:channel|here|everyone)\b", re.IGNORECASE)
LINK = re.compile(r"<([^<>|]*)(?:\|[^<>]*)?>")
BARE_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _text_objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("type") in ("mrkdwn", "plain_text") and isinstance(value.get("text"), str):
            yield value
        for item in value.values():
            yield from _text_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _text_objects(item)


def _buttons(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if value.get("type") == "button" and isinstance(value.get("url"), str):
            yield value["url"]
        for item in value.values():
            yield from _buttons(item)
    elif isinstance(value, list):
        for item in value:
            yield from _buttons(item)


def _origin(url: str) -> str:
    parts = urlsplit(url.replace("&amp;", "&"))
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def problems(call: Call, hosts: set[str]) -> list[str]:
    """Everything wrong with one recorded ``chat.postMessage`` / ``chat.update``; ``hosts``
    are the configured ``scheme://host`` link targets."""
    found: list[str] = []
    args = call.args
    if args.get("parse") != "none":
        found.append(f"parse={args.get('parse')!r}")
    texts: list[tuple[str, str]] = []
    if isinstance(args.get("text"), str):
        texts.append(("text", args["text"]))
    for obj in _text_objects(args.get("blocks")):
        if obj["type"] == "mrkdwn" and obj.get("verbatim") is not True:
            found.append(f"mrkdwn without verbatim: {obj['text'][:80]!r}")
        texts.append((obj["type"], obj["text"]))
    for kind, text in texts:
        if ACTIVE.search(text):
            found.append(f"active mention in {kind}: {text[:200]!r}")
        if BROADCAST.search(text):
            found.append(f"broadcast word in {kind}: {text[:200]!r}")
        for match in LINK.finditer(text):
            target = match.group(1)
            if target.startswith("!date^"):
                continue
            if kind != "mrkdwn" and kind != "text":
                found.append(f"markup in {kind}: {match.group(0)[:200]!r}")
            elif _origin(target) not in hosts:
                found.append(f"link to {target[:200]!r}")
        if BARE_URL.search(LINK.sub("", text)):
            found.append(f"a URL Slack may link in {kind}: {text[:200]!r}")
    for url in _buttons(args.get("blocks")):
        if _origin(url) not in hosts:
            found.append(f"button to {url[:200]!r}")
    return found
