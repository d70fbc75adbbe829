"""Starting Kubernetes API stand-ins (``agent.sim.kube_api``) for tests: the root
conftest's ``make_kube`` fixtures hand out a :class:`KubeStandIns`."""

from __future__ import annotations

from typing import Any, Self

from kubernetes import client

from agent.sim.kube_api import KubeApiServer

# A watch that asked for bookmarks gets one this often: tests resume quickly. The stand-in's
# own default is a real server's minute, which the tests of that behaviour ask for.
QUICK_BOOKMARKS = 0.2


class KubeStandIns:
    """Starts stand-ins and API clients for them; ``stop`` (or leaving ``with``) closes and
    stops them all."""

    def __init__(self) -> None:
        self._servers: list[KubeApiServer] = []
        self._clients: list[client.ApiClient] = []

    def __call__(self, **options: Any) -> KubeApiServer:
        """A started ``KubeApiServer(**options)``."""
        server = KubeApiServer(**options).start()
        self._servers.append(server)
        return server

    def api_client(self, server: KubeApiServer) -> client.ApiClient:
        api = server.api_client()
        self._clients.append(api)
        return api

    def stop(self) -> None:
        while self._clients:
            self._clients.pop().close()
        while self._servers:
            self._servers.pop().stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
