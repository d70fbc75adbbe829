"""The report week: ISO weeks, Monday 00:00 UTC to the next Monday 00:00 UTC.

``2026-W47`` covers [2026-11-16T00:00Z, 2026-11-23T00:00Z). Weeks are UTC whatever the
controller's time zone, so that two runs anywhere agree on the numbers of a week.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_WEEK_RE = re.compile(r"^(?P<year>\d{4})-W(?P<week>\d{2})$")
WEEK = timedelta(days=7)


@dataclass(frozen=True, order=True)
class ReportWeek:
    year: int
    week: int

    @classmethod
    def parse(cls, text: str) -> ReportWeek:
        """``2026-W47`` -> the week; ValueError with a line a user can act on otherwise."""
        match = _WEEK_RE.match(text.strip())
        if not match:
            raise ValueError(f"week {text!r} is not an ISO week like 2026-W47")
        year, week = int(match["year"]), int(match["week"])
        try:
            date.fromisocalendar(year, week, 1)
        except ValueError:
            raise ValueError(f"week {text!r} does not exist: {year} has no ISO week {week}") \
                from None
        return cls(year, week)

    @classmethod
    def containing(cls, moment: datetime) -> ReportWeek:
        iso = moment.astimezone(UTC).isocalendar()
        return cls(iso.year, iso.week)

    @classmethod
    def last_complete(cls, now: datetime) -> ReportWeek:
        """The newest week that ended at or before ``now``."""
        return cls.containing(now).previous()

    @property
    def name(self) -> str:
        return f"{self.year}-W{self.week:02d}"

    @property
    def start(self) -> datetime:
        monday = date.fromisocalendar(self.year, self.week, 1)
        return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + WEEK

    def previous(self) -> ReportWeek:
        return ReportWeek.containing(self.start - WEEK)

    def __str__(self) -> str:
        return self.name
