"""Imported once by the sandbox's fork server, before it forks any child (``SandboxPool``).

Every child's first S3 call would otherwise import boto3 and load botocore's endpoint data and
the S3 service model: about 250 ms of CPU per child, and children are recycled every
``OFFLOAD_SANDBOX_MAX_JOBS`` jobs, so for small jobs this start-up cost more CPU than the jobs
themselves: a child's first job took 260-310 ms of CPU, the next ones ~10 ms. Loaded here, a
child inherits the loaded modules and botocore's caches, and its first job takes ~30 ms.

No client is kept and no credentials are resolved (they are given, fake, to this throwaway
client). The built-in processors no longer make a boto3 client in the child (it has no
credentials: ``presigned_s3.py`` sends the requests the worker signs), so this now serves
processors that load boto3 or botocore's S3 model themselves. Nothing here touches the network.
"""

from __future__ import annotations

import boto3

from fargate_worker.hardening import make_undumpable

# The fork server was exec'd, so it is dumpable again: its children (siblings of each other,
# same uid) must not read its memory or file descriptors. Each child clears it too.
make_undumpable()

boto3.client(
    "s3",
    region_name="us-east-1",
    aws_access_key_id="preload",
    aws_secret_access_key="preload",
)
