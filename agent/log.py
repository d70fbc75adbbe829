"""Structured logging: JSON lines on stderr (or text for humans), with secrets redacted.

Call sites pass context as ``extra={"gpu": ..., "collector": ...}``; every extra key becomes
a JSON field. Values registered with :func:`register_secret` are masked in every line, so
a token that leaks into an exception message still never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["json", "text"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = tuple(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


# The fields every JSON line has. An ``extra=`` key of the same name must not replace them
# (a caller's ``ts`` once replaced the timestamp); it is kept as ``extra_<key>`` instead.
RESERVED_FIELDS: Final = frozenset({"ts", "level", "logger", "msg", "exc"})


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


def _unreserved(key: str, taken: dict[str, Any]) -> str:
    renamed = f"extra_{key}"
    while renamed in taken:
        renamed = f"extra_{renamed}"
    return renamed


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extras = _extras(record)
        for key, value in extras.items():
            entry[_unreserved(key, extras) if key in RESERVED_FIELDS else key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return redact(line)


def configure_logging(*, fmt: LogFormat = "json", level: str = "info",
                      stream: TextIO | None = None) -> None:
    """Send every ``agent.*`` log record to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log each HTTP request would drown the agent's own lines.
    for noisy in ("urllib3", "kubernetes", "botocore", "apscheduler", "grpc", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # urllib3 logs every retry ("Retrying (Retry(total=2 ...)) after connection broken")
    # at warning; the failure that follows says the same once, with what to check.
    logging.getLogger("urllib3.connectionpool").setLevel(max(logging.ERROR, root.level))
    # warnings.warn() (urllib3's InsecureRequestWarning with an insecure kubeconfig) writes
    # raw text to stderr, which would break the JSON lines: route it through the handler.
    logging.captureWarnings(True)
