"""The command-line uploader (``python -m offload``): sign in, upload straight to S3 through
the API's presigned URLs, follow the jobs. Imported by the CLI only: the Lambdas and the
worker never import this subpackage, and ``offload/__init__.py`` does not either."""
