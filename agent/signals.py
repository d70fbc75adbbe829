"""How a long-running command (node, controller, notifier, demo) stops on SIGTERM or SIGINT.

The first signal asks it to stop cleanly (it sets the command's stop event). A clean stop
can hang on something outside (a Slack call waiting out a rate limit, an API server that
stopped answering, a connection a client keeps open), so the same signal also starts a
deadline: if the process is still there ``grace`` seconds later, it logs what happened and
exits with code 1. A second signal exits at once. The deadline is shorter than Kubernetes'
default termination grace period (30 s), so the process exits on its own terms rather than
being killed mid-write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS: Final = 20.0
EXIT_FORCED: Final = 1


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # exiting anyway: a broken stream must not stop it
            handler.flush()


def stop_on_signals(stop: threading.Event, *, grace: float = DEFAULT_GRACE_SECONDS,
                    on_overdue: Callable[[], None] | None = None,
                    exit_now: Callable[[int], object] = os._exit) -> bool:
    """SIGTERM and SIGINT set ``stop``; ``grace`` seconds later the process exits anyway.

    ``on_overdue`` runs just before a forced exit (the demo kills its child processes).
    Returns False, installing nothing, when not called from the main thread (signals are
    delivered there only; tests run commands in threads and stop them with ``stop``).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    lock = threading.Lock()
    deadline: list[threading.Timer] = []

    def force(why: str) -> None:
        log.error("exiting without a clean stop: %s", why)
        if on_overdue is not None:
            try:
                on_overdue()
            except Exception:
                log.exception("cleanup before the forced exit failed")
        _flush_logs()
        exit_now(EXIT_FORCED)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        with lock:
            if deadline:
                second = True
            else:
                second = False
                timer = threading.Timer(
                    grace, force, args=(f"still running {grace:g} s after {name}",))
                timer.daemon = True
                timer.name = "stop-deadline"
                deadline.append(timer)
                timer.start()
        if second:
            force(f"a second {name}")
            return
        log.info("stopping", extra={"signal": name, "grace_seconds": grace})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return True
