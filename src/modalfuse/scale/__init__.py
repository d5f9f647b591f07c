"""Batch scoring beyond one machine: the Ray Data engine and the AWS batch task's S3 steps
(their benchmark is `modalfuse.bench.batch`)."""
