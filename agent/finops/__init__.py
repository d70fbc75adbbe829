"""The weekly FinOps GPU cost report: Prometheus (or Parquet) -> pandas -> HTML, CSV, Slack."""
