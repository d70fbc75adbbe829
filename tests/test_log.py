"""Log lines: a record's ``extra=`` never replaces the line's own fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent.log import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(fmt="json", level="info", stream=out)
    yield out
    configure_logging(fmt="json", level="info")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_extra_fields_cannot_replace_reserved_ones(stream: io.StringIO) -> None:
    log = logging.getLogger("agent.test")
    log.warning("the real message", extra={
        "ts": "1970-01-01", "level": "debug", "logger": "spoofed", "exc": "fake trace",
        "gpu": "GPU-1"})
    (entry,) = lines(stream)
    assert entry["ts"] != "1970-01-01" and str(entry["ts"]).startswith("20")
    assert entry["level"] == "warning"
    assert entry["logger"] == "agent.test"
    assert entry["msg"] == "the real message"
    assert "exc" not in entry  # no exception: the spoofed trace does not pose as one
    # What the caller passed is kept, under a name that says it came from extra=.
    assert entry["extra_ts"] == "1970-01-01"
    assert entry["extra_level"] == "debug"
    assert entry["extra_logger"] == "spoofed"
    assert entry["extra_exc"] == "fake trace"
    assert entry["gpu"] == "GPU-1"


def test_renamed_extra_does_not_replace_another_extra(stream: io.StringIO) -> None:
    logging.getLogger("agent.test").info("m", extra={"ts": "a", "extra_ts": "b"})
    (entry,) = lines(stream)
    assert entry["extra_ts"] == "b"
    assert entry["extra_extra_ts"] == "a"


def test_real_exception_keeps_its_field(stream: io.StringIO) -> None:
    log = logging.getLogger("agent.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"exc": "not this"})
    (entry,) = lines(stream)
    assert "RuntimeError: boom" in str(entry["exc"])
    assert entry["extra_exc"] == "not this"
