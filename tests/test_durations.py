"""The one duration parser, for config keys, alert rules and dashboard intervals."""

from __future__ import annotations

import pytest

from agent.durations import is_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800),
    ("500ms", 0.5), (" 2h ", 7200)])
def test_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert is_duration(text)


@pytest.mark.parametrize("text", ["", "h1", "1x", "1.5h", "5 minutes", "-1h", "1h 30m"])
def test_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        parse_duration(text)
    assert not is_duration(text)
