"""How a command says it failed at run time: one line, ``steward: <what failed>: <what to
check>``, on stderr, exit code 1 (bad config or usage is the CLI's exit code 2).

Library errors name their plumbing (``HTTPConnectionPool(...): Max retries exceeded ...
NameResolutionError(...)``); :func:`plain_cause` turns them into the phrase a person acts on.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

__all__ = ["RuntimeFailure", "plain_cause"]


class RuntimeFailure(Exception):
    """A runtime failure with what failed and what to check; the CLI prints it as one line."""

    def __init__(self, what: str, check: str) -> None:
        super().__init__(f"{what}: {check}")
        self.what = what
        self.check = check


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and urllib3's ``reason``, depth first, no repeats."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(current, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        # requests wraps urllib3's error as its first argument.
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))


def plain_cause(exc: BaseException) -> str:
    """A connection error as a short phrase: "cannot resolve host 'prometheus'",
    "connection refused", "timed out", "TLS handshake failed: ..."; else the error's
    first line, at most 200 characters."""
    chain = list(_chain(exc))
    text = " ".join(str(e) for e in chain)
    if any(type(e).__name__ == "NameResolutionError" or isinstance(e, socket.gaierror)
           for e in chain) or "Name or service not known" in text:
        host = next((h for e in chain if (h := getattr(e, "_host", None))), None)
        return f"cannot resolve host {host!r}" if host else "cannot resolve the host name"
    for err in chain:
        if isinstance(err, ConnectionRefusedError) or "Connection refused" in str(err):
            return "connection refused"
        if isinstance(err, TimeoutError) or "timed out" in str(err).lower():
            return "timed out"
        if isinstance(err, ssl.SSLError):
            return f"TLS handshake failed: {err.reason or err}"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "Max retries exceeded" in text and "Connection" in text:
        return "cannot connect"
    return first[:200]
