"""Command lines of the entry points that take their configuration from the environment only
(the worker, its health check, the migrations): ECS and the Lambda runtime configure them with
environment variables, so their command line has nothing to say but ``--help``.

Parsing it anyway makes ``--help`` print the usage and exit 0, and any other argument a usage
error (exit 2), before anything starts: such a command line never starts a worker, opens a
connection or runs a migration with its arguments silently ignored.
"""

from __future__ import annotations

import argparse

ENVIRONMENT = (
    "Configured by environment variables only (README.md, Settings): REDIS_URL, DATABASE_URL, "
    "OFFLOAD_QUEUE_NAME, OFFLOAD_DB_SCHEMA and the other OFFLOAD_* settings."
)


def parse_env_only_args(prog: str, description: str, argv: list[str] | None = None) -> None:
    """Exit with the usage on ``--help`` (0) or on any argument (2); return when there is none."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=ENVIRONMENT)
    parser.parse_args(argv)
