"""The CDK app's constructs and stacks (CDK only: no runtime logic; see docs/deploy.md).

One construct per concern, with keyword-only props, composed by a thin stack:
``network`` (VPC, endpoints, flow logs), ``storage`` (bucket, event queue; stateful),
``queue`` (ElastiCache; stateful), ``database`` (RDS + proxy; stateful), ``migrations``
(schema on deploy), ``workers`` (ECS Fargate), ``auth`` (Cognito; stateful), ``api`` (API
Gateway + Lambdas), ``observability`` (dashboard, alarms). ``app.py`` only wires them.
Shared pieces: ``config`` (cdk.json context), ``bundling`` (Lambda asset without Docker),
``functions``, ``metrics``, ``runtime_env``, ``nag`` (cdk-nag acknowledgements), ``base``.
"""
