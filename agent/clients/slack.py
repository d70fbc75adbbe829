"""The Slack sink: chat.postMessage / chat.update / file uploads through slack-sdk, failures
sorted by remedy. Its typed settings are in ``slack_params``. Used by the notifier, the
hygiene owner notices and the FinOps report.

One retry policy: the sink never sleeps. slack-sdk's own retry handlers are turned off: a
handler that sleeps for Retry-After would hold a notifier delivery thread and, through it,
other channels. Every failure becomes one of three exceptions (one base type,
:class:`SlackCallFailed`) and the caller decides when to try again: the notifier's worker
schedules the retry; a one-shot command with nothing else to do (the weekly report) waits
the Retry-After out with :func:`wait_out_rate_limits`.

- :class:`SlackRateLimited`: 429 or ``ratelimited``; wait ``retry_after`` on that channel.
- :class:`SlackUnavailable`: network error, timeout, 5xx, Slack's ``internal_error``; back
  off. ``maybe_delivered`` says the request may have been applied before the failure.
- :class:`SlackRejected`: any other ``{"ok": false}``; the request was not applied.
  ``sink_wide`` says it is about the token or the app (every message would fail alike), not
  about this message or its channel.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web import SlackResponse

from agent.clients.slack_params import SlackSettings

log = logging.getLogger(__name__)

METADATA_EVENT_TYPE: Final = "steward_alert_group"
# Errors after which Slack may already have applied the call (its docs for internal_error).
_MAYBE_APPLIED: Final = frozenset({"internal_error", "fatal_error"})
_TRANSIENT: Final = frozenset({
    "internal_error", "fatal_error", "service_unavailable", "request_timeout",
    "team_added_to_org", "ekm_access_denied",
})
_RATE_LIMITED: Final = frozenset({"ratelimited", "rate_limited"})
# Errors that mean "our blocks", where the same message as plain text may still go through.
RENDER_ERRORS: Final = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long",
                                  "invalid_attachments", "too_many_attachments",
                                  "markdown_text_conflict"})
# The root cannot be edited or replied to any more (deleted, too old): post a new one.
ROOT_GONE_ERRORS: Final = frozenset({"message_not_found", "cant_update_message",
                                     "edit_window_closed", "thread_not_found"})
# The token or the app, not the message: retried without end, never dead-lettered.
SINK_ERRORS: Final = frozenset({
    "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
    "no_permission", "missing_scope", "org_login_required", "team_access_not_granted",
    "access_denied", "not_allowed_token_type", "two_factor_setup_required",
})
# The channel cannot take the message: a notice goes to the default channel instead.
CHANNEL_ERRORS: Final = frozenset({
    "channel_not_found", "not_in_channel", "is_archived", "restricted_action",
    "restricted_action_read_only_channel", "restricted_action_non_threadable_channel",
    "restricted_action_thread_only_channel", "cannot_post_in_channel",
})
_CHANNEL_ID: Final = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_DEFAULT_RETRY_AFTER: Final = 1.0
_LOOKUP_PAGES: Final = 10
_T = TypeVar("_T")


class SlackCallFailed(Exception):
    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


class SlackRateLimited(SlackCallFailed):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(method, f"rate limited, retry after {retry_after:g}s")
        self.retry_after = retry_after


class SlackUnavailable(SlackCallFailed):
    def __init__(self, method: str, detail: str, *, maybe_delivered: bool) -> None:
        super().__init__(method, detail)
        self.maybe_delivered = maybe_delivered


class SlackRejected(SlackCallFailed):
    def __init__(self, method: str, error: str) -> None:
        super().__init__(method, error)
        self.error = error

    @property
    def sink_wide(self) -> bool:
        return self.error in SINK_ERRORS


@dataclass(frozen=True)
class Message:
    """What chat.postMessage / chat.update send: fallback ``text`` plus ``blocks``."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Upload:
    """A file to upload into a thread: where it is, its name in Slack, its title."""

    path: Path
    filename: str
    title: str


@dataclass(frozen=True)
class Posted:
    channel_id: str
    ts: str


def looks_like_channel_id(channel: str) -> bool:
    return bool(_CHANNEL_ID.match(channel))


def _retry_after(headers: dict[str, Any]) -> float:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                break
    return _DEFAULT_RETRY_AFTER



def _classify(method: str, exc: Exception, *, write: bool) -> SlackCallFailed:
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(response.status_code)
        data = response.data if isinstance(response.data, dict) else {}
        error = str(data.get("error") or f"http_{status}")
        if status == 429 or error in _RATE_LIMITED:
            return SlackRateLimited(method, _retry_after(dict(response.headers)))
        if status >= 500 or error in _TRANSIENT:
            return SlackUnavailable(method, error, maybe_delivered=write and (
                status >= 500 or error in _MAYBE_APPLIED))
        return SlackRejected(method, error)
    # The request may have reached Slack before the connection broke.
    return SlackUnavailable(method, f"{type(exc).__name__}: {exc}", maybe_delivered=write)


class SlackSink:
    """One bot token, many channels. Thread-safe: WebClient keeps no per-call state."""

    def __init__(self, client: WebClient) -> None:
        self._client = client

    @property
    def api_url(self) -> str:
        """Slack's API base URL: a permalink on its host is Slack's own (a stand-in's too)."""
        return str(self._client.base_url)

    @classmethod
    def create(cls, settings: SlackSettings) -> SlackSink:
        if settings.token is None:
            raise ValueError("slack.token is not set")
        return cls(WebClient(token=settings.token, base_url=settings.api_url.rstrip("/") + "/",
                             timeout=int(max(1, settings.timeout_seconds)), retry_handlers=[]))

    def _call(self, method: str, call: Callable[[], SlackResponse], *, write: bool
              ) -> SlackResponse:
        try:
            return call()
        except (SlackApiError, SlackRequestError, OSError, http.client.HTTPException,
                ValueError) as exc:
            raise _classify(method, exc, write=write) from exc

    def post(self, channel: str, message: Message, *, thread_ts: str | None = None,
             op_id: str | None = None) -> Posted:
        metadata = None if op_id is None else {
            "event_type": METADATA_EVENT_TYPE, "event_payload": {"op": op_id}}
        # parse=none, link_names=false: Slack acts on no mention or channel name in the text
        # but our own explicit markup (the text is escaped, see blocks.escape).
        response = self._call("chat.postMessage", lambda: self._client.chat_postMessage(
            channel=channel, text=message.text, blocks=message.blocks or None,
            thread_ts=thread_ts, metadata=metadata, unfurl_links=False, unfurl_media=False,
            parse="none", link_names=False,
        ), write=True)
        return Posted(channel_id=str(response["channel"]), ts=str(response["ts"]))

    def update(self, channel_id: str, ts: str, message: Message) -> None:
        # An empty list (not None) removes blocks the previous version had.
        self._call("chat.update", lambda: self._client.chat_update(
            channel=channel_id, ts=ts, text=message.text, blocks=message.blocks,
            parse="none", link_names=False,
        ), write=True)

    def permalink(self, channel_id: str, ts: str) -> str | None:
        """The message's permalink (chat.getPermalink), to link it from another message."""
        response = self._call("chat.getPermalink", lambda: self._client.chat_getPermalink(
            channel=channel_id, message_ts=ts), write=False)
        link = response.get("permalink")
        return str(link) if link else None

    def upload(self, channel_id: str, files: Sequence[Upload], *, thread_ts: str) -> list[str]:
        """Upload ``files`` into a thread (files_upload_v2: get URLs, upload, complete);
        returns the file ids. ``channel_id`` must be an id: the completion refuses names."""
        response = self._call("files.completeUploadExternal", lambda: self._client.files_upload_v2(
            channel=channel_id, thread_ts=thread_ts,
            file_uploads=[{"file": str(f.path), "filename": f.filename, "title": f.title}
                          for f in files]), write=True)
        return [str(f.get("id")) for f in response.get("files") or []]

    def post_ephemeral(self, channel: str, user: str, message: Message) -> None:
        """A message only ``user`` sees (a refused click); not kept in the channel."""
        self._call("chat.postEphemeral", lambda: self._client.chat_postEphemeral(
            channel=channel, user=user, text=message.text, blocks=message.blocks or None,
            parse="none", link_names=False), write=True)

    def usergroup_members(self, usergroup: str) -> frozenset[str]:
        """The user ids in a Slack user group (usergroups.users.list; usergroups:read)."""
        response = self._call("usergroups.users.list", lambda: self._client.usergroups_users_list(
            usergroup=usergroup), write=False)
        return frozenset(str(u) for u in response.get("users") or [])

    def resolve_channel(self, channel: str) -> str | None:
        """The id of a channel configured by name (conversations.list; needs channels:read)."""
        if looks_like_channel_id(channel):
            return channel
        name = channel.lstrip("#")
        cursor: str | None = None
        for _ in range(50):
            page = cursor

            def call(page: str | None = page) -> SlackResponse:
                return self._client.conversations_list(
                    cursor=page, limit=1000, exclude_archived=True,
                    types="public_channel,private_channel")

            response = self._call("conversations.list", call, write=False)
            for item in response.get("channels") or []:
                if item.get("name") == name:
                    return str(item["id"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None
        return None

    def find_posted(self, channel_id: str, op_id: str, *, oldest: float,
                    thread_ts: str | None = None) -> str | None:
        """The ts of the message we posted with ``op_id`` in its metadata, if Slack has it.

        Roots are searched in the channel's history, replies in the thread, from ``oldest``.
        """
        cursor: str | None = None
        for _ in range(_LOOKUP_PAGES):
            page = cursor

            def call(page: str | None = page) -> SlackResponse:
                if thread_ts is None:
                    return self._client.conversations_history(
                        channel=channel_id, oldest=f"{oldest:.6f}", include_all_metadata=True,
                        limit=200, cursor=page)
                return self._client.conversations_replies(
                    channel=channel_id, ts=thread_ts, oldest=f"{oldest:.6f}",
                    include_all_metadata=True, limit=200, cursor=page)

            method = "conversations.history" if thread_ts is None else "conversations.replies"
            response = self._call(method, call, write=False)
            for item in response.get("messages") or []:
                meta = item.get("metadata") or {}
                payload = meta.get("event_payload") or {}
                if meta.get("event_type") == METADATA_EVENT_TYPE and payload.get("op") == op_id:
                    return str(item["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None
        return None


def wait_out_rate_limits(call: Callable[[], _T], *, attempts: int = 4,
                         sleep: Callable[[float], None] | None = None) -> _T:
    """``call()``, waiting out a 429's Retry-After (plus up to a second of jitter) up to
    ``attempts`` tries in all. For callers that may block (a one-shot command), never for a
    delivery thread."""
    for attempt in range(attempts):
        try:
            return call()
        except SlackRateLimited as exc:
            if attempt == attempts - 1:
                raise
            (sleep or time.sleep)(exc.retry_after + random.random())
    raise AssertionError("unreachable")
