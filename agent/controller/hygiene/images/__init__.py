"""The stale-images job: registry adapters (ECR, OCI distribution), its policy and the job."""
