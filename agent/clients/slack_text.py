"""Untrusted text made inert for Slack: the one set of escaping rules for every message
Steward posts (alert groups, their threads, hygiene owner notices, click answers).

Slack acts on ``<!channel>``, ``<@U…>`` and ``<url|label>`` in mrkdwn, on ``@channel``-like
words in plain text, and links bare URLs: none of that may be formed by text that came from
outside (a webhook, a label, an annotation, an image tag).
"""

from __future__ import annotations

import re
from typing import Final

_CONTROL: Final = {c: " " for c in (*range(0, 9), 11, 12, *range(14, 32), 127)}
_ZWSP: Final = "\u200b"
# Plain-text words Slack may turn into a notification for everyone in the channel.
_BROADCAST: Final = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)


def clean(text: str) -> str:
    return text.translate(_CONTROL)


def inert(text: str) -> str:
    """``text`` with control characters blanked and nothing Slack could act on: no
    broadcast mention, no URL it would link (for plain_text objects)."""
    return _BROADCAST.sub("@" + _ZWSP, clean(text)).replace("://", ":" + _ZWSP + "//")


def plain(text: str) -> str:
    """Untrusted text for a plain_text object: :func:`inert`, and no angle brackets at all
    (Slack shows plain_text literally, but nothing markup-like should leave us)."""
    # single angle quotation marks (U+2039, U+203A) in their place
    return inert(text).replace("<", "\u2039").replace(">", "\u203a")


def escape(text: str) -> str:
    """Untrusted text for mrkdwn: Slack's control characters as entities (so ``<!channel>``,
    ``<@U…>`` or ``<url|label>`` cannot be formed), and :func:`inert`."""
    return inert(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
