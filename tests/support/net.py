"""Ports and readiness polling for servers started by tests."""

from __future__ import annotations

from agent.localnet import free_port, http_ok, wait_until

__all__ = ["free_port", "http_ok", "metric_value", "wait_until"]


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None
