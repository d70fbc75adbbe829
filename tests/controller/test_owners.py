"""The leader's ownership and remediation series, against the API stand-in: namespace ->
team (the FinOps mapping), and what a remediation tool did to each node (read only)."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from agent.controller.owners import node_remediation_collector
from agent.exporter.collection import CollectionLoops
from agent.finops.team_info import namespace_teams_collector
from agent.sim.kube_api import KubeApiServer
from tests.controller.test_cluster_collectors import collect, value


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}}}


def node(name: str, *, unschedulable: bool = False, taints: list[dict[str, str]] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def test_every_namespace_gets_its_team_as_the_finops_report_maps_it(
        kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.apply(namespace("ml", {"team": "research"}))
    kube.apply(namespace("inference", {"team": "platform", "owner": "x"}))
    kube.apply(namespace("scratch"))
    kube.apply(namespace("data", {"team": "from-label"}))
    loops = CollectionLoops([namespace_teams_collector(
        client.CoreV1Api(api_client), 30, static={"data": "data-eng", "gone": "old"},
        label="team")])
    samples = collect(loops)
    team = "steward_namespace_team_info"
    assert value(samples, team, namespace="ml", team="research") == 1
    assert value(samples, team, namespace="inference", team="platform") == 1
    # finops.namespace_teams wins over the label, as in the report
    assert value(samples, team, namespace="data", team="data-eng") == 1
    assert value(samples, team, namespace="data", team="from-label") is None
    # no mapping: said so, never left out
    assert value(samples, team, namespace="scratch", team="unassigned") == 1
    assert value(samples, team, namespace="gone", team="old") == 1
    assert len([k for k in samples if k[0] == team]) == \
        len({ns.metadata.name for ns in client.CoreV1Api(api_client).list_namespace().items}
            | {"gone"})
    assert value(samples, "steward_collector_up", collector="namespace_teams") == 1


def test_a_failed_namespace_list_exports_no_team_rather_than_unassigned(
        kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.apply(namespace("ml", {"team": "research"}))
    loops = CollectionLoops([namespace_teams_collector(
        client.CoreV1Api(api_client), 30, static={}, label="team")])
    assert value(collect(loops), "steward_namespace_team_info", namespace="ml",
                 team="research") == 1
    kube.inject_fault(path_regex="^/api/v1/namespaces$", status=500, times=None)
    samples = collect(loops)
    assert value(samples, "steward_collector_up", collector="namespace_teams") == 0
    # Nothing is exported while the list fails (the rules then say team="unknown"), and
    # nothing was turned into "unassigned".
    assert not [k for k in samples if k[0] == "steward_namespace_team_info"]


def test_cordons_quarantines_and_remediation_taints_are_read_not_written(
        kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.apply(node("gpu-node-1"))
    kube.apply(node("gpu-node-7", unschedulable=True,
                    annotations={"quarantineHealthEvent": '[{"checkName":"GpuXidError"}]',
                                 "quarantineHealthEventIsCordoned": "True"},
                    taints=[{"key": "nvidia.com/gpu-xid-error", "value": "true",
                             "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                            # a GPU pool's own taint is not a remediation
                            {"key": "nvidia.com/gpu", "value": "present",
                             "effect": "NoSchedule"}]))
    kube.apply(node("cpu-node-1", taints=[{"key": "nvidia.com/gpu-error", "value": "fatal",
                                          "effect": "NoExecute"}]))
    kube.clear_request_log()
    loops = CollectionLoops([node_remediation_collector(
        client.CoreV1Api(api_client), 30,
        taint_keys=("nvidia.com/gpu-error", "nvidia.com/gpu-xid-error"))])
    samples = collect(loops)
    assert value(samples, "steward_node_cordoned", hostname="gpu-node-1") == 0
    assert value(samples, "steward_node_cordoned", hostname="gpu-node-7") == 1
    assert value(samples, "steward_node_cordoned", hostname="cpu-node-1") == 0
    assert value(samples, "steward_node_quarantined", hostname="gpu-node-7",
                 by="nvsentinel") == 1
    assert value(samples, "steward_node_quarantined", hostname="gpu-node-1",
                 by="nvsentinel") is None
    taint = "steward_node_remediation_taint"
    assert value(samples, taint, hostname="gpu-node-7", key="nvidia.com/gpu-xid-error",
                 effect="NoSchedule") == 1
    assert value(samples, taint, hostname="cpu-node-1", key="nvidia.com/gpu-error",
                 effect="NoExecute") == 1
    assert not [k for k in samples if k[0] == taint and ("key", "nvidia.com/gpu") in k[1]]
    # Read only: Steward never cordons, taints or drains.
    assert {r.method for r in kube.request_log()} == {"GET"}


def test_a_failed_node_list_fails_the_collector(kube: KubeApiServer,
                                                api_client: client.ApiClient) -> None:
    kube.inject_fault(path_regex="^/api/v1/nodes$", status=403, times=None)
    loops = CollectionLoops([node_remediation_collector(
        client.CoreV1Api(api_client), 30, taint_keys=())])
    samples = collect(loops)
    assert value(samples, "steward_collector_up", collector="node_remediation") == 0
    assert not [k for k in samples if k[0] == "steward_node_cordoned"]
