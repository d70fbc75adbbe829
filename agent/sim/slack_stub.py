"""A Slack Web API stub over real HTTP: records calls, keeps messages, injects failures.

Point ``slack_sdk.WebClient(base_url=stub.api_url)`` at it. It implements what Steward
calls: ``chat.postMessage``, ``chat.update``, ``conversations.history`` / ``.replies`` /
``.list`` (with message metadata), ``auth.test`` and the file upload flow
(``files.getUploadURLExternal``, the upload URL, ``files.completeUploadExternal``). Like
Slack, it answers ``{"ok": false, "error": ...}`` with HTTP 200, wants channel ids (not
names) for updates and history, and refuses blocks past Slack's limits (``invalid_blocks``),
so a test catches a message Slack would reject.

Failures for a while: ``stub.fail("status", status=500, seconds=2)``,
``stub.fail("ratelimit", retry_after=1, times=3)``, ``stub.fail("error", error="...")``;
``"drop"`` applies the call and then closes the connection without answering (a lost
response), ``"hold"`` applies it and answers only when ``fault.release()`` is called.
Any POST outside ``/api/`` is recorded in ``stub.webhooks`` (a stand-in webhook receiver).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from agent.localnet import wait_until

FaultKind = Literal["status", "ratelimit", "error", "drop", "hold"]
JsonObj = dict[str, Any]
WRITE_METHODS = frozenset({"chat.postMessage", "chat.update"})

# Slack's documented Block Kit limits.
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_BUTTON_TEXT = 75
MAX_URL = 3000
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_ACTIONS = 25
MAX_TEXT = 40000


@dataclass
class Call:
    method: str
    args: JsonObj
    status: int
    response: JsonObj | None
    at: float  # time.monotonic() when the request arrived
    token: str | None


@dataclass
class StubMessage:
    channel: str
    ts: str
    text: str
    blocks: list[JsonObj]
    thread_ts: str | None
    metadata: JsonObj | None
    files: list[JsonObj] = field(default_factory=list)
    updates: list[JsonObj] = field(default_factory=list)  # each chat.update's arguments
    posted_blocks: list[JsonObj] = field(default_factory=list)  # as first posted

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def api_shape(self, *, with_metadata: bool) -> JsonObj:
        shape: JsonObj = {"type": "message", "ts": self.ts, "text": self.text,
                          "blocks": self.blocks, "bot_id": "BSTEWARD"}
        if self.thread_ts is not None:
            shape["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata is not None:
            shape["metadata"] = self.metadata
        if self.files:
            shape["files"] = self.files
        return shape


@dataclass
class Fault:
    kind: FaultKind
    methods: frozenset[str] | None = None
    channels: frozenset[str] | None = None
    times: int | None = None
    until: float | None = None
    status: int = 500
    retry_after: float = 1.0
    error: str = "internal_error"
    hits: int = 0
    _released: threading.Event = field(default_factory=threading.Event)
    _held: threading.Event = field(default_factory=threading.Event)

    def active(self, now: float) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.until is None or now < self.until

    def release(self) -> None:
        self._released.set()

    def wait_held(self, timeout: float = 10.0) -> None:
        """Until a call is being held by this fault (kind "hold")."""
        if not self._held.wait(timeout):
            raise TimeoutError("no call was held")


def _str(args: JsonObj, name: str) -> str:
    value = args.get(name)
    return "" if value is None else str(value)


def _json_arg(args: JsonObj, name: str) -> Any:
    value = args.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


class SlackApiProblem(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


MAX_BUTTON_VALUE = 2000


def check_blocks(blocks: Any) -> None:
    """Raise ``invalid_blocks`` where Slack would."""
    if blocks is None:
        return
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        raise SlackApiProblem("invalid_blocks")
    for block in blocks:
        if not isinstance(block, dict):
            raise SlackApiProblem("invalid_blocks")
        kind = block.get("type")
        if kind == "header":
            text = (block.get("text") or {}).get("text", "")
            if not text or len(text) > MAX_HEADER or block["text"].get("type") != "plain_text":
                raise SlackApiProblem("invalid_blocks")
        elif kind == "section":
            text = (block.get("text") or {}).get("text")
            fields = block.get("fields")
            if text is None and not fields:
                raise SlackApiProblem("invalid_blocks")
            if text is not None and not 1 <= len(text) <= MAX_SECTION:
                raise SlackApiProblem("invalid_blocks")
            if fields is not None and (len(fields) > MAX_FIELDS or any(
                    not 1 <= len(f.get("text", "")) <= MAX_FIELD for f in fields)):
                raise SlackApiProblem("invalid_blocks")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= MAX_ACTIONS:
                raise SlackApiProblem("invalid_blocks")
            for element in elements:
                label = (element.get("text") or {}).get("text", "")
                url = element.get("url", "")
                if not 1 <= len(label) <= MAX_BUTTON_TEXT or len(url) > MAX_URL \
                        or len(element.get("value", "")) > MAX_BUTTON_VALUE:
                    raise SlackApiProblem("invalid_blocks")
        elif kind == "context":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 10:
                raise SlackApiProblem("invalid_blocks")
        elif kind not in ("divider", "image", "rich_text", "markdown"):
            raise SlackApiProblem("invalid_blocks")


class SlackStub:
    def __init__(self, *, tokens: Iterable[str] = ("xoxb-test",)) -> None:
        self.tokens = set(tokens)
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._messages: list[StubMessage] = []
        self._channels: dict[str, str] = {}  # id -> name
        self._faults: list[Fault] = []
        self._last_micros = 0
        self._file_ids = itertools.count(1)
        self.uploads: dict[str, JsonObj] = {}
        self.webhooks: list[tuple[str, JsonObj]] = []
        self.ephemerals: list[JsonObj] = []  # chat.postEphemeral: (channel, user, text)
        self.usergroups: dict[str, set[str]] = {}  # usergroups.users.list: id -> user ids
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="slack-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for fault in self._faults:
                fault.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            for fault in self._faults:
                fault.release()
            self._calls.clear()
            self._messages.clear()
            self._faults.clear()
            self.uploads.clear()
            self.webhooks.clear()
            self.ephemerals.clear()

    # --- faults ---------------------------------------------------------------------------

    def fail(self, kind: FaultKind, *, status: int = 500, error: str = "internal_error",
             retry_after: float = 1.0, times: int | None = None, seconds: float | None = None,
             methods: Iterable[str] | None = None, channels: Iterable[str] | None = None
             ) -> Fault:
        """Fail matching calls ``times`` times or for ``seconds`` (or until cleared)."""
        fault = Fault(kind=kind, status=status, error=error, retry_after=retry_after,
                      times=times,
                      until=None if seconds is None else time.monotonic() + seconds,
                      methods=None if methods is None else frozenset(methods),
                      channels=None if channels is None else frozenset(
                          self.channel_id(c) for c in channels))
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            for fault in self._faults:
                fault.release()
            self._faults.clear()

    def _fault_for(self, method: str, channel: str | None) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            for fault in self._faults:
                if not fault.active(now):
                    continue
                if fault.methods is not None and method not in fault.methods:
                    continue
                if fault.channels is not None and (channel is None or self._id_of(channel)
                                                   not in fault.channels):
                    continue
                fault.hits += 1
                return fault
        return None

    # --- inspection -----------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def ok_calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self.calls(method) if c.response is not None and c.response.get("ok")]

    def messages(self, channel: str | None = None) -> list[StubMessage]:
        wanted = None if channel is None else self.channel_id(channel)
        with self._lock:
            return [m for m in self._messages if wanted is None or m.channel == wanted]

    def roots(self, channel: str | None = None) -> list[StubMessage]:
        return [m for m in self.messages(channel) if not m.is_reply]

    def replies(self, root: StubMessage) -> list[StubMessage]:
        return [m for m in self.messages(root.channel) if m.is_reply and m.thread_ts == root.ts]

    def channel_id(self, name_or_id: str) -> str:
        with self._lock:
            return self._id_of(name_or_id)

    def channel_name(self, channel_id: str) -> str:
        """``#name`` of a channel id, as Slack's client shows it (the id when unknown)."""
        with self._lock:
            name = self._channels.get(channel_id)
        return f"#{name}" if name else channel_id

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 10.0,
                 what: str = "slack stub condition") -> None:
        wait_until(predicate, timeout=timeout, what=what)

    # --- the API --------------------------------------------------------------------------

    def _id_of(self, channel: str) -> str:
        if channel in self._channels:
            return channel
        name = channel.lstrip("#")
        channel_id = "C" + hashlib.sha256(name.encode()).hexdigest()[:10].upper()
        self._channels.setdefault(channel_id, name)
        return channel_id

    def _next_ts(self) -> str:
        micros = max(self._last_micros + 1, int(time.time() * 1_000_000))
        self._last_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _find(self, channel_id: str, ts: str) -> StubMessage | None:
        return next((m for m in self._messages if m.channel == channel_id and m.ts == ts), None)

    def _existing_channel(self, channel: str) -> str:
        """Methods that take only a channel id, as Slack's do."""
        if channel not in self._channels:
            raise SlackApiProblem("channel_not_found")
        return channel

    def apply(self, method: str, args: JsonObj) -> JsonObj:
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            raise SlackApiProblem("unknown_method")
        with self._lock:
            result: JsonObj = handler(args)
        return {"ok": True, **result}

    def _m_auth_test(self, args: JsonObj) -> JsonObj:
        return {"url": "https://steward-test.slack.com/", "team": "steward", "user": "steward",
                "team_id": "T0STEWARD", "user_id": "U0STEWARD", "bot_id": "BSTEWARD"}

    def _m_chat_postMessage(self, args: JsonObj) -> JsonObj:
        channel = _str(args, "channel")
        if not channel:
            raise SlackApiProblem("channel_not_found")
        text = _str(args, "text")
        blocks = _json_arg(args, "blocks")
        if not text and not blocks:
            raise SlackApiProblem("no_text")
        if len(text) > MAX_TEXT:
            raise SlackApiProblem("msg_too_long")
        check_blocks(blocks)
        channel_id = self._id_of(channel)
        thread_ts = _str(args, "thread_ts") or None
        if thread_ts is not None and self._find(channel_id, thread_ts) is None:
            raise SlackApiProblem("thread_not_found")
        metadata = _json_arg(args, "metadata")
        message = StubMessage(channel=channel_id, ts=self._next_ts(), text=text,
                              blocks=blocks or [], thread_ts=thread_ts,
                              metadata=metadata if isinstance(metadata, dict) else None,
                              posted_blocks=blocks or [])
        self._messages.append(message)
        return {"channel": channel_id, "ts": message.ts,
                "message": message.api_shape(with_metadata=True)}

    def _m_chat_update(self, args: JsonObj) -> JsonObj:
        channel_id = self._existing_channel(_str(args, "channel"))
        message = self._find(channel_id, _str(args, "ts"))
        if message is None:
            raise SlackApiProblem("message_not_found")
        blocks = _json_arg(args, "blocks")
        text = _str(args, "text")
        if not text and not blocks:
            raise SlackApiProblem("no_text")
        check_blocks(blocks)
        message.text = text
        if blocks is not None:
            message.blocks = blocks
        message.updates.append(dict(args))
        return {"channel": channel_id, "ts": message.ts, "text": text}

    def _m_chat_getPermalink(self, args: JsonObj) -> JsonObj:
        channel_id = self._existing_channel(_str(args, "channel"))
        message = self._find(channel_id, _str(args, "message_ts"))
        if message is None:
            raise SlackApiProblem("message_not_found")
        # Slack's shape (https://<workspace>.slack.com/archives/<channel>/p<ts without dot>),
        # on the stub's own origin: the notifier links it as Slack's.
        return {"channel": channel_id,
                "permalink": f"{self.url}/archives/{channel_id}/p{message.ts.replace('.', '')}"}

    def by_permalink(self, url: str) -> StubMessage | None:
        """The message a permalink (from chat.getPermalink) points at."""
        parts = urlsplit(url).path.split("/")
        if len(parts) != 4 or parts[1] != "archives" or not parts[3].startswith("p"):
            return None
        digits = parts[3][1:]
        with self._lock:
            return self._find(parts[2], f"{digits[:-6]}.{digits[-6:]}")

    def _page(self, items: list[StubMessage], args: JsonObj) -> JsonObj:
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        page = items[start:start + limit]
        more = start + limit < len(items)
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        return {"messages": [m.api_shape(with_metadata=with_metadata) for m in page],
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _m_conversations_history(self, args: JsonObj) -> JsonObj:
        channel_id = self._existing_channel(_str(args, "channel"))
        oldest = float(args.get("oldest") or 0)
        latest = float(args.get("latest") or 1e12)
        items = [m for m in self._messages if m.channel == channel_id and not m.is_reply
                 and oldest < float(m.ts) <= latest]
        return self._page(sorted(items, key=lambda m: float(m.ts), reverse=True), args)

    def _m_conversations_replies(self, args: JsonObj) -> JsonObj:
        channel_id = self._existing_channel(_str(args, "channel"))
        root = self._find(channel_id, _str(args, "ts"))
        if root is None:
            raise SlackApiProblem("thread_not_found")
        oldest = float(args.get("oldest") or 0)
        replies = [m for m in self._messages if m.channel == channel_id and m.is_reply
                   and m.thread_ts == root.ts and float(m.ts) > oldest]
        return self._page([root, *sorted(replies, key=lambda m: float(m.ts))], args)

    def _m_conversations_list(self, args: JsonObj) -> JsonObj:
        return {"channels": [{"id": cid, "name": name, "is_channel": True}
                             for cid, name in sorted(self._channels.items())],
                "response_metadata": {"next_cursor": ""}}

    def _m_chat_postEphemeral(self, args: JsonObj) -> JsonObj:
        channel_id = self._existing_channel(_str(args, "channel"))
        user = _str(args, "user")
        if not user:
            raise SlackApiProblem("user_not_in_channel")
        text = _str(args, "text")
        blocks = _json_arg(args, "blocks")
        if not text and not blocks:
            raise SlackApiProblem("no_text")
        check_blocks(blocks)
        self.ephemerals.append({"channel": channel_id, "user": user, "text": text,
                                "blocks": blocks or []})
        return {"message_ts": self._next_ts()}

    def _m_usergroups_users_list(self, args: JsonObj) -> JsonObj:
        group = self.usergroups.get(_str(args, "usergroup"))
        if group is None:
            raise SlackApiProblem("no_such_subteam")
        return {"users": sorted(group)}

    def _m_files_getUploadURLExternal(self, args: JsonObj) -> JsonObj:
        filename = _str(args, "filename")
        length = int(args.get("length") or 0)
        if not filename or length <= 0:
            raise SlackApiProblem("invalid_arguments")
        file_id = f"F{next(self._file_ids):08d}"
        self.uploads[file_id] = {"id": file_id, "filename": filename, "length": length,
                                 "data": None, "completed": False}
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: JsonObj) -> JsonObj:
        files = _json_arg(args, "files")
        if not isinstance(files, list) or not files:
            raise SlackApiProblem("invalid_arguments")
        shared = []
        for item in files:
            upload = self.uploads.get(str(item.get("id")))
            if upload is None or upload["data"] is None:
                raise SlackApiProblem("file_not_found")
            upload.update(completed=True, title=item.get("title") or upload["filename"])
            shared.append({"id": upload["id"], "name": upload["filename"],
                           "title": upload["title"], "size": len(upload["data"])})
        channel = _str(args, "channel_id") or _str(args, "channels").split(",")[0]
        if channel:
            channel_id = self._id_of(channel)
            for upload_id in (s["id"] for s in shared):
                self.uploads[upload_id]["channel"] = channel_id
            self._messages.append(StubMessage(
                channel=channel_id, ts=self._next_ts(), text=_str(args, "initial_comment"),
                blocks=[], thread_ts=_str(args, "thread_ts") or None, metadata=None,
                files=shared))
        return {"files": shared}

    def _store_upload(self, file_id: str, data: bytes) -> bool:
        with self._lock:
            upload = self.uploads.get(file_id)
            if upload is None:
                return False
            upload["data"] = data
            return True

    # --- HTTP -----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: JsonObj | None,
                       headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _args(self, raw: bytes) -> JsonObj:
                split = urlsplit(self.path)
                args: JsonObj = dict(parse_qsl(split.query, keep_blank_values=True))
                content_type = (self.headers.get("Content-Type") or "").lower()
                if raw and "json" in content_type:
                    loaded = json.loads(raw)
                    if isinstance(loaded, dict):
                        args.update(loaded)
                elif raw and "x-www-form-urlencoded" in content_type:
                    args.update(parse_qsl(raw.decode(), keep_blank_values=True))
                return args

            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                if path.startswith("/upload/"):
                    ok = stub._store_upload(path.rsplit("/", 1)[1], raw)
                    self.send_response(200 if ok else 404)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                    return
                if not path.startswith("/api/"):
                    body = json.loads(raw) if raw else {}
                    with stub._lock:
                        stub.webhooks.append((path, body))
                    self._reply(200, {"status": "ok"})
                    return
                self._api(path[len("/api/"):], raw)

            def _api(self, method: str, raw: bytes) -> None:
                args = self._args(raw)
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ").strip() or args.get("token")
                call = Call(method=method, args=args, status=200, response=None,
                            at=time.monotonic(), token=token)
                with stub._lock:
                    stub._calls.append(call)
                channel = _str(args, "channel") or _str(args, "channel_id") or None
                fault = stub._fault_for(method, channel)
                if token not in stub.tokens:
                    call.response = {"ok": False, "error": "invalid_auth"}
                    self._reply(200, call.response)
                    return
                if fault is not None and fault.kind in ("status", "ratelimit", "error"):
                    if fault.kind == "status":
                        call.status = fault.status
                        call.response = {"ok": False, "error": "stub_http_error"}
                        body = b"<html>upstream unavailable</html>"
                        self.send_response(fault.status)
                        self.send_header("Content-Type", "text/html")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    elif fault.kind == "ratelimit":
                        call.status = 429
                        call.response = {"ok": False, "error": "ratelimited"}
                        self._reply(429, call.response,
                                    {"Retry-After": f"{fault.retry_after:g}"})
                    else:
                        call.response = {"ok": False, "error": fault.error}
                        self._reply(200, call.response)
                    return
                try:
                    response = stub.apply(method, args)
                except SlackApiProblem as exc:
                    response = {"ok": False, "error": exc.error}
                call.response = response
                if fault is not None and fault.kind == "drop":
                    self.close_connection = True
                    return  # applied, but the caller never hears about it
                if fault is not None and fault.kind == "hold":
                    fault._held.set()
                    fault._released.wait(60)
                with contextlib.suppress(OSError):  # the caller is gone (killed while held)
                    self._reply(200, response)

        return Handler
