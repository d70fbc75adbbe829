"""Durations as Prometheus writes them (``90s``, ``15m``, ``1h30m``, ``2d``): one parser for
every config key, alert rule and dashboard interval that holds one."""

from __future__ import annotations

import re
from typing import Final

_PART: Final = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                        "y": 31536000}


def parse_duration(text: str) -> float:
    """``2h``, ``1h30m``, ``90s``, ``500ms`` -> seconds; ValueError for anything else."""
    stripped = text.strip()
    if not stripped or _PART.sub("", stripped):
        raise ValueError(f"{text!r} is not a Prometheus duration like 2h, 90m or 1h30m")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(stripped)))


def is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True
