"""The Kubernetes surface: connecting to the API (``api``)."""
