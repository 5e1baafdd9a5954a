"""cdk-nag (v3) acknowledgements: every one with its reason, next to the construct it covers.

cdk-nag 3 runs as a CDK policy-validation plugin (``Validations.of(app).add_plugins(...)``,
see ``app.py``); a finding that is not acknowledged fails synth. Acknowledgements apply to the
construct and everything under it, and findings with a detail (IAM5 wildcards) are
acknowledged one by one as ``Rule[Finding]``.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    if len(reason) < 20:
        raise ValueError(f"acknowledgement of {rule} needs a real reason, got {reason!r}")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
