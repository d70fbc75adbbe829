"""The orphaned-buckets job: its S3 adapter, its policy and the job."""
