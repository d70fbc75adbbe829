"""Running a check as an unprivileged user, for permission tests run as root.

Root passes every file permission check (chmod 000 stops nothing), so under root a forked
child drops to uid/gid 65534 (nobody), runs the check and reports its answer through a pipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.support.net import wait_until

NOBODY = 65534


def as_unprivileged(ask: Callable[[], str], *, timeout: float = 10.0) -> str:
    """``ask()`` as user nobody (directly when not root); its answer, or AssertionError
    if the child failed."""
    if os.geteuid() != 0:
        return ask()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the test runner
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, ask().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    exited: list[int] = []

    def child_exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exited.append(status)
        return bool(done)

    try:
        wait_until(child_exited, timeout=timeout, what="unprivileged child")
    except TimeoutError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    assert os.waitstatus_to_exitcode(exited[0]) == 0, answer
    return answer
