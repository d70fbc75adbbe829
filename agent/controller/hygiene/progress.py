"""Progress of a long scan, reported by jobs and shown by the CLI (``output.ProgressBar``)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, what: str) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """The default outside a terminal session: reports nothing."""

    def start(self, total: int, what: str) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
