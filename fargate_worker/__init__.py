"""The Fargate worker: ``python -m fargate_worker`` takes jobs off the Redis queue."""
