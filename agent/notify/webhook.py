"""Alertmanager webhook payloads (version "4"): parsing and validation into typed objects.

Anything that does not validate is a :class:`PayloadError` with a one-line reason, so the
HTTP layer can answer 4xx before a single byte reaches the outbox.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)

# Alertmanager sends at most ``max_alerts`` alerts when configured; the request body limit
# bounds the rest. These bounds keep one payload from exhausting the renderer or the store.
MAX_ALERTS: Final = 10_000
MAX_LABELS: Final = 512
MAX_GROUP_KEY: Final = 16_384
MAX_LABEL_VALUE: Final = 16_384
MAX_ANNOTATION_VALUE: Final = 65_536
# Group keys of owner notices (agent.notify.owners): Alertmanager's start with "{", and a
# webhook may not claim one (it would write into a team's notice).
OWNER_KEY_PREFIX: Final = "steward-owner:"
# Every time the notifier shows or computes with (dashboard ranges, Slack's <!date>) lies in
# this range; anything outside it is a sender's bug, refused at the door.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)

Status = Literal["firing", "resolved"]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
LabelSet = Annotated[dict[LabelName, Annotated[str, StringConstraints(
    max_length=MAX_LABEL_VALUE)]], Field(max_length=MAX_LABELS)]
AnnotationSet = Annotated[dict[LabelName, Annotated[str, StringConstraints(
    max_length=MAX_ANNOTATION_VALUE)]], Field(max_length=MAX_LABELS)]


class PayloadError(ValueError):
    """The request body is not an Alertmanager v4 webhook payload. ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _utc(value: datetime) -> datetime:
    """``value`` in UTC, within [EARLIEST, LATEST); ValueError otherwise.

    Alertmanager always sends an offset; a naive time from another sender is read as UTC.
    The range is checked before converting: "0001-01-01T00:00:00+01:00" in UTC would be in
    year 0, which ``datetime`` cannot hold (OverflowError at the first use).
    """
    if not 1970 <= value.year < 9000:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return utc


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []


class _Model(BaseModel):
    # Unknown fields are ignored: Alertmanager may add fields within version 4.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class WebhookAlert(_Model):
    status: Status
    labels: LabelSet
    annotations: AnnotationSet = Field(default_factory=dict)
    # Both in UTC once parsed.
    starts_at: datetime = Field(alias="startsAt")
    # "0001-01-01T00:00:00Z" while firing: parsed as None (in any offset).
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL", max_length=8192)
    fingerprint: str = Field(default="", max_length=256)

    @field_validator("starts_at")
    @classmethod
    def _starts_in_range(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_validator("ends_at")
    @classmethod
    def _ends_in_range(cls, value: datetime | None) -> datetime | None:
        if value is None or value.year <= 1:
            return None
        return _utc(value)

    @property
    def key(self) -> str:
        """Alertmanager's fingerprint, or a stable hash of the labels when a sender omits it."""
        if self.fingerprint:
            return self.fingerprint
        digest = hashlib.sha256()
        for name, value in sorted(self.labels.items()):
            digest.update(f"{name}\0{value}\0".encode())
        return "h" + digest.hexdigest()[:16]

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def starts_utc(self) -> datetime:
        return self.starts_at

    @property
    def ends_utc(self) -> datetime | None:
        return self.ends_at


class Notification(_Model):
    """One webhook call: the state of one aggregation group (``group_key``) at one moment."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey", min_length=1, max_length=MAX_GROUP_KEY)
    status: Status
    receiver: str = Field(default="", max_length=1024)
    group_labels: LabelSet = Field(default_factory=dict, alias="groupLabels")
    common_labels: LabelSet = Field(default_factory=dict, alias="commonLabels")
    common_annotations: AnnotationSet = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL", max_length=8192)
    truncated_alerts: int = Field(default=0, ge=0, le=2**31, alias="truncatedAlerts")
    alerts: list[WebhookAlert] = Field(min_length=1, max_length=MAX_ALERTS)
    _group_id: str = PrivateAttr(default="")

    def model_post_init(self, context: object, /) -> None:
        # Computed once: the outbox, the worker and delivery all key on it.
        self._group_id = group_id(self.group_key)

    def has_nul(self) -> bool:
        return any("\x00" in s for item in (
            self.group_key, self.receiver, self.external_url, self.group_labels,
            self.common_labels, self.common_annotations,
            *((a.labels, a.annotations, a.generator_url, a.fingerprint) for a in self.alerts))
            for s in _strings(item))

    @property
    def group_id(self) -> str:
        """A fixed-length key for ``group_key`` (which can be kilobytes of label matchers)."""
        # Straight from the private dict: pydantic's attribute lookup for private
        # attributes is its slow path, and this is read several times per webhook.
        private = self.__pydantic_private__
        return str(private["_group_id"]) if private else group_id(self.group_key)

    def to_json(self) -> str:
        """The normalised form the outbox stores and the worker reads back."""
        return self.model_dump_json(by_alias=True)


def group_id(group_key: str) -> str:
    return hashlib.sha256(group_key.encode("utf-8")).hexdigest()[:32]


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"invalid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    if first["type"] == "model_type" and not first["loc"]:
        return "payload must be a JSON object"
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        message = "required field is missing" if err["type"] == "missing" \
            else err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def parse_notification(body: bytes) -> Notification:
    """Validate ``body`` as an Alertmanager webhook v4 payload."""
    try:
        notification = Notification.model_validate_json(body)
    except ValidationError as exc:
        raise PayloadError(_reason(exc)) from None
    # PostgreSQL text cannot hold NUL, and no label or annotation needs one: a payload with
    # one could be acknowledged and then never stored. JSON can only spell it \u0000.
    if b"\\u0000" in body and notification.has_nul():
        raise PayloadError("strings must not contain NUL (\\u0000)")
    if notification.group_key.startswith(OWNER_KEY_PREFIX):
        raise PayloadError(f"groupKey: the prefix {OWNER_KEY_PREFIX!r} is Steward's own")
    return notification
