"""A port chosen for a server must not be one the kernel may hand to a client meanwhile."""

from __future__ import annotations

import socket

from agent import localnet


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low = localnet._ephemeral_low()
    ports = {localnet.free_port() for _ in range(50)}
    assert all(localnet._LOWEST <= port < low for port in ports), sorted(ports)
    assert len(ports) > 40  # random: processes choosing at once rarely meet
    port = ports.pop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_chosen(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        choices = iter([taken, taken, taken + 1 if taken + 1 < 65536 else taken - 1])
        monkeypatch.setattr(localnet.random, "randrange", lambda a, b: next(choices))
        monkeypatch.setattr(localnet, "_ephemeral_low", lambda: 65536)
        assert localnet.free_port() != taken
