"""The idle-GPU job: its Prometheus evidence, its Kubernetes adapter, its policy and the job."""
