"""Grafana dashboards as code: shared panel builders, rendering to JSON, and the lint.

The dashboard sources live in ``dashboards/*.dashboard.py`` (grafanalib); ``render`` turns
them into the committed ``dashboards/*.json`` and ``lint`` checks the result.
"""
