"""The whole pipeline on one machine, for the demo, end-to-end tests and debugging.

``python -m offload_local`` starts a moto server (S3, SQS, Cognito, CloudWatch), Redis and
PostgreSQL (the configured ones, or throwaway servers), the Lambda handlers in "containers" of
their own behind a local API gateway, the S3 -> SQS -> enqueue wiring, the scheduled Lambdas and
N workers. The handler and ``offload/`` code is the code AWS runs; everything local-only lives
in this package, which neither runtime imports.
"""
