"""One adapter per outside service, used by every component: Prometheus, Slack, Kubernetes.

Each client owns its service's wire format and turns every failure into its one error type;
components never talk to these services any other way. A new outside service lands here.
"""
