"""Slack request signing (the v0 scheme): who may reach ``POST /slack/actions``.

Slack signs each request with the app's signing secret: ``X-Slack-Signature`` is ``v0=`` and
the hex HMAC-SHA256 of ``v0:{X-Slack-Request-Timestamp}:{raw body}``. A request is taken only
when the signature matches (compared in constant time) and its timestamp is within five
minutes of our clock; a replay of a signed request inside that window is caught by the
store, which remembers every accepted signature (see ``actions.ActionStore.accept``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.log import register_secret

log = logging.getLogger(__name__)

SIGNING_SECRET_ENV: Final = "SLACK_SIGNING_SECRET"
# Slack's own advice: refuse requests more than five minutes old (or ahead).
MAX_AGE_SECONDS: Final = 300.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` Slack sends for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Verified:
    signature: str
    timestamp: float


class Unverified(Exception):
    """Why a request is refused (401): said in the log, never the secret or the signature."""


class SigningSecret:
    """The signing secret, from a mounted file (re-read when it changes, so rotating the
    Secret needs no restart) or given directly ($SLACK_SIGNING_SECRET)."""

    def __init__(self, *, secret: str | None = None, secret_file: Path | None = None) -> None:
        if (secret is None) == (secret_file is None):
            raise ValueError("exactly one of secret and secret_file")
        self._secret = secret or ""
        self._file = secret_file
        self._mtime: float | None = None
        self._lock = threading.Lock()
        if secret_file is not None:
            self._reload()
        if not self._secret:
            raise ValueError("the Slack signing secret is empty")
        register_secret(self._secret)

    def _reload(self) -> None:
        assert self._file is not None
        mtime = self._file.stat().st_mtime
        if mtime != self._mtime:
            secret = self._file.read_text(encoding="utf-8").strip()
            if secret:
                self._secret = secret
                register_secret(secret)
            self._mtime = mtime

    def _current(self) -> str:
        if self._file is None:
            return self._secret
        with self._lock:
            try:
                self._reload()
            except OSError:
                log.warning("cannot re-read the Slack signing secret file; keeping the old one")
            return self._secret

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> Verified:
        """The request's signature and time when Slack signed it; Unverified otherwise."""
        named = {k.lower(): v for k, v in headers.items()}
        raw_ts = named.get("x-slack-request-timestamp")
        signature = named.get("x-slack-signature")
        if not raw_ts or not signature:
            raise Unverified("not signed (no X-Slack-Signature or X-Slack-Request-Timestamp)")
        try:
            timestamp = int(raw_ts.strip())
        except ValueError:
            raise Unverified("X-Slack-Request-Timestamp is not a number") from None
        if abs(now - timestamp) > MAX_AGE_SECONDS:
            raise Unverified(f"stale request: signed {now - timestamp:.0f}s from our clock "
                             f"(limit {MAX_AGE_SECONDS:.0f}s)")
        expected = sign(self._current(), str(timestamp), body)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8",
                                                                               "replace")):
            raise Unverified("bad signature")
        return Verified(signature=expected, timestamp=float(timestamp))


def signing_secret_from(secret_file: Path | None, environ: Mapping[str, str]
                        ) -> SigningSecret | None:
    """slack.signing_secret_file, else $SLACK_SIGNING_SECRET; None: interactivity is off."""
    if secret_file is not None:
        return SigningSecret(secret_file=secret_file)
    secret = environ.get(SIGNING_SECRET_ENV)
    return SigningSecret(secret=secret) if secret else None
