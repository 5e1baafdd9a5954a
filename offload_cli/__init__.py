"""The command-line uploader (``offload``, or ``python -m offload_cli``): sign in, upload
straight to S3 through the API's presigned URLs, follow the jobs.

A package of its own, outside ``offload/``: it talks to the API over HTTP only and imports
nothing from the domain core, and neither the Lambda asset nor the worker image carries it, so
a change here redeploys nothing."""
