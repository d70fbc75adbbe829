"""``steward notifier dead-letters [--retry ID]``: list the alert groups the notifier gave up
on, and put one back in the outbox.

Reads and writes the state store directly (``state.url``), so it works whether or not a
notifier is running; a running one (any replica) picks a replayed dead letter up within
``notifier.poll_seconds``. A replay that fails again becomes a new dead letter.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine, inspect, make_url
from sqlalchemy.exc import SQLAlchemyError

from agent.config import StewardConfig
from agent.notify.outbox import AlreadyReplayed, DeadLetter, Outbox, UnknownDeadLetter
from agent.state import open_store

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class _NoStore(Exception):
    pass


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _open(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database \
            and parsed.database != ":memory:" and not Path(parsed.database).exists():
        raise _NoStore(f"the state store {parsed.database} does not exist")
    engine = open_store(url, create=False)
    if not inspect(engine).has_table("notifier_dead_letters"):
        engine.dispose()
        raise _NoStore("the state store holds no notifier data")
    return engine


def _table(letters: list[DeadLetter], out: TextIO) -> None:
    if not letters:
        print("no dead letters", file=out)
        return
    rows = [("ID", "CREATED", "ALERTS", "WEBHOOKS", "ATTEMPTS", "NOTICE", "REPLAYED", "REASON")]
    for letter in letters:
        names = ", ".join(letter.alertnames[:3]) + (
            f" +{len(letter.alertnames) - 3}" if len(letter.alertnames) > 3 else "")
        notice = letter.fallback_state + (f" {letter.fallback_channel}"
                                          if letter.fallback_channel else "")
        rows.append((str(letter.id), _when(letter.created_at), names or "?",
                     str(letter.webhooks), str(letter.attempts), notice,
                     _when(letter.replayed_at), letter.reason[:120]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1], file=out)


def run_dead_letters(config: StewardConfig, *, retry: int | None, output: str = "table",
                     include_replayed: bool = False, out: TextIO = sys.stdout) -> int:
    scheme = make_url(config.state.url).get_backend_name()

    def store_failed(what: str, exc: SQLAlchemyError) -> int:
        # The first line only: the rest is SQL and parameters. The URL is never printed
        # (it may hold a password).
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"steward: {what} ({scheme}): {first}: check state.url", file=sys.stderr)
        return EXIT_RUNTIME

    try:
        engine = _open(config.state.url)
    except _NoStore as exc:
        print(f"steward: {exc}: check state.url (the notifier's store)", file=sys.stderr)
        return EXIT_RUNTIME
    except SQLAlchemyError as exc:
        return store_failed("cannot open the state store", exc)
    try:
        outbox = Outbox(engine)
        if retry is None:
            letters = outbox.list_dead_letters(include_replayed=include_replayed)
            if output == "json":
                print(json.dumps([letter.to_json() for letter in letters], indent=2), file=out)
            else:
                _table(letters, out)
            return EXIT_OK
        try:
            letter = outbox.replay(retry)
        except UnknownDeadLetter:
            print(f"steward: dead letter {retry} does not exist: list them with "
                  "`steward notifier dead-letters`", file=sys.stderr)
            return EXIT_USAGE
        except AlreadyReplayed as exc:
            print(f"steward: dead letter {retry} was already replayed at "
                  f"{_when(exc.dead_letter.replayed_at)}: a replay that failed again is a new "
                  "dead letter (see `steward notifier dead-letters`)", file=sys.stderr)
            return EXIT_USAGE
        names = ", ".join(letter.alertnames[:5]) or "?"
        print(f"replayed dead letter {letter.id}: {letter.webhooks} webhook(s) of {names} are "
              "back in the outbox; a running notifier delivers them within "
              f"{config.notifier.poll_seconds:g} s", file=out)
        return EXIT_OK
    except SQLAlchemyError as exc:
        return store_failed("cannot read the dead letters", exc)
    finally:
        engine.dispose()
