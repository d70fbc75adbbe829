"""In-process stand-in for the Kubernetes API server, driven through the official client.

The server and its lifecycle are in ``server``; beside it, along the seams of the API it
imitates: the resources it serves (``resources``), its error responses (``errors``), body
validation (``validation``), selectors, patches, the records tests read back (``records``),
the HTTP plumbing and authorization. Importers use the names re-exported here.
"""

from agent.sim.kube_api.authorization import Grant
from agent.sim.kube_api.errors import KubeApiError
from agent.sim.kube_api.records import Fault, RequestRecord
from agent.sim.kube_api.selectors import parse_label_selector
from agent.sim.kube_api.server import KubeApiServer, standin_threads

__all__ = [
    "Fault", "Grant", "KubeApiError", "KubeApiServer", "RequestRecord", "parse_label_selector",
    "standin_threads",
]
