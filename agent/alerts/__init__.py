"""Steward's alert catalog and what is generated from it: rule files, Grafana alerts, lint.

Modules: ``catalog`` (the alerts), ``xid`` (the XID table), ``render`` (the three rule
files), ``lint`` (the checks `steward build` and CI run). Nothing is imported here, so that
reading the catalog does not load grafanalib.
"""
