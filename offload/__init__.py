"""offload: the domain core shared by the Lambdas and the Fargate worker.

Nothing here imports CDK; everything here runs the same in AWS, locally and in tests.
"""
