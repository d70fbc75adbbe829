"""The fast lane's guard, a pytest plugin that the root conftest loads: with
``STEWARD_TEST_LANE=fast`` (``make test-fast``) a test that starts a real server fails, so
the lane's marker selection is proved, not trusted.

A test that starts one must be marked ``integration`` (``realk8s`` implies it). What counts
as starting a server: spawning one of :data:`SERVER_BINARIES` (Prometheus, Alertmanager, the
registry, PostgreSQL, etcd, kube-apiserver, the kubelet's PodResources server, the
browser), a long-running ``steward`` command
(:data:`SERVER_COMMANDS`) that the test does not simply wait out with ``subprocess.run``,
or ``make demo``, and starting moto's server. Every subprocess
passes through the ``subprocess.Popen`` audit event and moto's server module is imported only
to start one, so an audit hook sees them all, whichever helper or fixture does it. One-shot
tools (promtool, helm, amtool, ``steward build``) and the in-process stand-ins (the
Kubernetes API, Slack) are allowed: they are what makes the lane fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import PurePath
from typing import Any

import pytest

LANE_VARIABLE = "STEWARD_TEST_LANE"

SERVER_BINARIES = frozenset({
    "prometheus", "alertmanager", "prometheus-alertmanager", "docker-registry", "registry",
    "postgres", "pg_ctl", "pg_ctlcluster", "initdb", "etcd", "kube-apiserver",
    "kube-controller-manager", "kubelet-podresources", "chromium", "chromium-browser",
    "google-chrome",
})
SERVER_COMMANDS = frozenset({"node", "controller", "notifier", "demo"})
SERVER_MODULES = frozenset({"moto.server"})

_violations: list[str] = []


def in_fast_lane() -> bool:
    return os.environ.get(LANE_VARIABLE) == "fast"


def _program(argv: Sequence[str]) -> str:
    return PurePath(argv[0]).name if argv else ""


def _steward_command(argv: Sequence[str]) -> str | None:
    """The subcommand of ``python -m agent.cli SUB ...`` or ``steward SUB ...``, if any."""
    words = list(argv)
    if _program(words) == "steward":
        rest = words[1:]
    elif "agent.cli" in words and words[words.index("agent.cli") - 1] == "-m":
        rest = words[words.index("agent.cli") + 1:]
    else:
        return None
    return next((word for word in rest if not word.startswith("-")), None)


def server_started_by(argv: Sequence[str], *, waited: bool = False) -> str | None:
    """What real server ``argv`` would start, or None for a one-shot command.

    ``waited``: the caller blocks until the process exits (``subprocess.run``). A ``steward``
    server command run that way is a one-shot (``--help``, a bad flag or config: it exits
    at once); the server binaries are servers however they are started.
    """
    program = _program(argv)
    if program in SERVER_BINARIES:
        return program
    if program == "make" and "demo" in argv[1:]:
        return "make demo"
    command = _steward_command(argv)
    if command in SERVER_COMMANDS and not waited:
        return f"steward {command}"
    return None


def _waited_for() -> bool:
    """Whether this Popen is made inside ``subprocess.run`` (which waits for the exit)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is subprocess.run.__code__:
            return True
        frame = frame.f_back
    return False


def _refuse(what: str) -> None:
    message = (f"this test starts a real server ({what}) but is not marked integration: "
               "the fast lane (make test-fast) must not run it")
    _violations.append(message)
    raise RuntimeError(message)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        argv = args[1]
        words = [os.fsdecode(argv)] if isinstance(argv, (str, bytes)) else \
            [os.fsdecode(word) for word in argv]
        server = server_started_by(words, waited=_waited_for())
        if server is not None:
            _refuse(server)
    elif event == "import" and args[0] in SERVER_MODULES:
        _refuse("moto")


def pytest_configure(config: pytest.Config) -> None:
    # Audit hooks cannot be removed: installed in the fast lane only.
    if in_fast_lane():
        sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Iterator[None]:
    """A phase (setup, call, teardown) in which a server was refused fails, even if the
    error was caught on the way; a session fixture's is charged to the test that set it up."""
    report: pytest.TestReport = yield
    if _violations:
        if not report.failed:
            report.outcome = "failed"
            report.longrepr = _violations[0]
        _violations.clear()
    return report
