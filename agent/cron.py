"""Crontab expressions for APScheduler 3, with crontab's weekday numbers (0 or 7 = Sunday).

APScheduler 3 reads day-of-week numbers from Monday = 0, so ``CronTrigger.from_crontab(
"0 8 * * 1")`` fires on Tuesdays. :func:`cron_trigger` rewrites the field as day names,
which both read the same way.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(text: str) -> int:
    name = text.lower()[:3]
    if name in _WEEKDAYS:
        return _WEEKDAYS.index(name)
    day = int(text)
    if not 0 <= day <= 7:
        raise ValueError(f"day of week {text!r} is not 0-7")
    return day


def cron_day_of_week(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3 day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, last = span.split("-", 1)
            low, high = _cron_day(first), _cron_day(last)
        else:
            low = _cron_day(span)
            high = 6 if step_text else low
        if high < low or step < 1:
            raise ValueError(f"day of week {part!r} is not a valid range")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_WEEKDAYS[day] for day in sorted(days, key=lambda d: (d - 1) % 7))


def cron_trigger(expression: str, *, timezone: tzinfo | str | None = None) -> Any:
    """A 5-field crontab expression as an APScheduler 3 ``CronTrigger`` with cron's weekdays."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=cron_day_of_week(weekday), timezone=timezone)
