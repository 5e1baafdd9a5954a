"""Cognito: the user pool behind the API's authorizer, and the web page's app client.

No self sign-up (an administrator invites users: docs/deploy.md, "First user", and puts them
in a group: ``operators``, and the quota tiers ``standard`` and ``plus``); a strong
password policy; optional TOTP MFA; threat protection (the Plus feature plan) where the
environment asks for it. Stateful (it holds the users): ``AuthStack`` has termination
protection where the environment asks for it; never rename the construct ids.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_cognito as cognito
from constructs import Construct

from stacks.base import OffloadStack
from stacks.config import AuthConfig, EnvConfig
from stacks.nag import acknowledge

# (name, description, precedence): the names are the ones offload.caller knows.
USER_GROUPS = (
    ("operators", "Runs the service: operator views and tools (not a quota tier)", 0),
    ("plus", "Quota tier plus: the larger per-user upload quotas (OFFLOAD_QUOTA_PLUS_*)", 10),
    (
        "standard",
        "Quota tier standard: the default per-user upload quotas (a user in no tier group"
        " has them too)",
        20,
    ),
)


class UserDirectory(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: AuthConfig,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, id)
        self.user_pool = cognito.UserPool(
            self,
            "UserPool",
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            standard_attributes=cognito.StandardAttributes(
                email=cognito.StandardAttribute(required=True, mutable=True)
            ),
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(3),
            ),
            mfa=cognito.Mfa.OPTIONAL,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            feature_plan=(
                cognito.FeaturePlan.PLUS
                if config.threat_protection
                else cognito.FeaturePlan.ESSENTIALS
            ),
            standard_threat_protection_mode=(
                cognito.StandardThreatProtectionMode.FULL_FUNCTION
                if config.threat_protection
                else None
            ),
            deletion_protection=removal_policy == RemovalPolicy.RETAIN,
            removal_policy=removal_policy,
        )
        self.client = self.user_pool.add_client(
            "WebClient",
            # The web page and the CLI sign in with USER_PASSWORD_AUTH (the password goes to
            # Cognito over TLS, never to our API); SRP stays allowed for SDK-based clients.
            auth_flows=cognito.AuthFlow(user_srp=True, user_password=True),
            generate_secret=False,  # a browser cannot keep a secret
            # No hosted UI, no OAuth flows, no callback URLs: nothing we do not use.
            disable_o_auth=True,
            prevent_user_existence_errors=True,
            enable_token_revocation=True,
            access_token_validity=Duration.hours(1),
            id_token_validity=Duration.hours(1),
            refresh_token_validity=Duration.days(30),
        )
        # The groups the API reads from the ID token's cognito:groups claim (offload.caller):
        # the quota tiers, and the operators' role. Precedence matters only for IAM roles
        # (none here): the lowest number wins; an operator's quotas are their tier's.
        self.groups = {
            name: cognito.CfnUserPoolGroup(
                self,
                f"Group{name.title()}",
                user_pool_id=self.user_pool.user_pool_id,
                group_name=name,
                description=description,
                precedence=precedence,
            )
            for name, description, precedence in USER_GROUPS
        }
        acknowledge(
            self.user_pool,
            "AwsSolutions-COG2",
            "MFA is optional by product decision (TOTP offered to every user); users are "
            "invited by an administrator, never self-registered.",
        )
        if not config.threat_protection:
            acknowledge(
                self.user_pool,
                "AwsSolutions-COG8",
                "The Plus feature plan is used in prod only; this environment has invited "
                "test users.",
            )


class AuthStack(OffloadStack):
    """Cognito user pool and the web app client (stateful: users)."""

    stateful = True

    def __init__(self, scope: Construct, id: str, *, config: EnvConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.directory = UserDirectory(
            self, "Users", config=config.auth, removal_policy=self.stateful_removal_policy
        )
        CfnOutput(self, "UserPoolId", value=self.directory.user_pool.user_pool_id)
        CfnOutput(self, "UserPoolClientId", value=self.directory.client.user_pool_client_id)
