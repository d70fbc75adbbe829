"""Steward: observability and ops automation for AI platforms on Kubernetes."""

__version__ = "0.1.0"
