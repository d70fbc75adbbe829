"""Moved to ``agent.sim.kube_api`` (the demo runs it too); kept while in-flight work moves over."""

from agent.sim.kube_api import *  # noqa: F403
from agent.sim.kube_api import KubeApiServer

__all__ = ["KubeApiServer"]
