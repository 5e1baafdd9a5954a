"""The VPC: public, private-with-egress (Lambdas, workers, endpoints) and isolated (ElastiCache,
RDS) subnets over two or more AZs, NAT gateways (one in dev), an S3 gateway endpoint, interface
endpoints for every AWS API the workloads call where the environment pays for them
(``network.interfaceEndpoints``; else those calls go through NAT), flow logs, and the
workloads' security groups.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.base import OffloadStack
from stacks.config import EnvConfig, NetworkConfig, log_retention

REDIS_PORT = 6379
POSTGRES_PORT = 5432

PUBLIC = "Public"
APP = "App"
DATA = "Data"

# Interface endpoints: what the Lambdas and the Fargate tasks call without going through NAT.
INTERFACE_ENDPOINTS = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
}


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, config: NetworkConfig) -> None:
        super().__init__(scope, id)
        self.has_nat = config.nat_gateways > 0
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.cidr),
            max_azs=config.max_azs,
            nat_gateways=config.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name=PUBLIC, subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                # Without NAT the app subnets have no route out (the Lambdas reach S3 by the
                # gateway endpoint, Secrets Manager by its interface endpoint, Redis and
                # PostgreSQL inside the VPC; the workers move to the public subnets).
                ec2.SubnetConfiguration(
                    name=APP,
                    subnet_type=(
                        ec2.SubnetType.PRIVATE_WITH_EGRESS
                        if self.has_nat
                        else ec2.SubnetType.PRIVATE_ISOLATED
                    ),
                    cidr_mask=20,
                ),
                ec2.SubnetConfiguration(
                    name=DATA, subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=log_retention(config.flow_log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

        if config.interface_endpoints:
            self._add_interface_endpoints(config.cidr, INTERFACE_ENDPOINTS, self.app_subnets)
        elif not self.has_nat:
            # The one AWS API the Lambdas cannot do without and that has no gateway endpoint:
            # the migrations and the secret's rotation read the master secret. One AZ is
            # enough (its private DNS name answers from both); $7.30 a month instead of a NAT
            # gateway's $36.50.
            first_app_subnet = self.vpc.select_subnets(subnet_group_name=APP).subnets[0]
            self._add_interface_endpoints(
                config.cidr,
                {"SecretsManager": INTERFACE_ENDPOINTS["SecretsManager"]},
                ec2.SubnetSelection(subnets=[first_app_subnet]),
            )

        # The workloads' security groups live here, so the data stores' groups (in their own
        # stacks) can admit exactly these and nothing else.
        self.workers_sg = ec2.SecurityGroup(
            self,
            "WorkersSecurityGroup",
            vpc=self.vpc,
            description="offload Fargate workers",
            allow_all_outbound=False,
        )
        # A worker runs hostile files' processing: it reaches only what it talks to. HTTPS for
        # the AWS APIs (interface endpoints, the S3 gateway endpoint, ECR, or through NAT where
        # a service has no endpoint), and Redis and PostgreSQL in the data subnets (their own
        # groups admit the workers' group; the subnets' ranges keep this stack free of theirs).
        self.workers_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs")
        for subnet in self.vpc.select_subnets(subnet_group_name=DATA).subnets:
            for port, what in ((REDIS_PORT, "Redis"), (POSTGRES_PORT, "PostgreSQL")):
                self.workers_sg.add_egress_rule(
                    ec2.Peer.ipv4(subnet.ipv4_cidr_block),
                    ec2.Port.tcp(port),
                    f"{what} (data subnet)",
                )
        self.lambdas_sg = ec2.SecurityGroup(
            self, "LambdasSecurityGroup", vpc=self.vpc, description="offload Lambda functions"
        )
        # The schema migrations function logs in as the master user, with its password: RDS
        # Proxy authenticates with IAM only, so that function reaches the instance directly,
        # and only it (and the workers) among the Lambdas' peers may.
        self.migrations_sg = ec2.SecurityGroup(
            self,
            "MigrationsSecurityGroup",
            vpc=self.vpc,
            description="offload schema migrations function",
        )

    def _add_interface_endpoints(
        self,
        cidr: str,
        services: dict[str, ec2.InterfaceVpcEndpointAwsService],
        subnets: ec2.SubnetSelection,
    ) -> None:
        """Interface endpoints for ``services`` in ``subnets``. Without them
        (``network.interfaceEndpoints: false``) the same calls leave through the NAT
        gateway(s): same API, same IAM, traffic billed per GB by the NAT instead."""
        endpoint_sg = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="Interface endpoints: HTTPS from inside the VPC",
            allow_all_outbound=False,
        )
        endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        for name, service in services.items():
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=subnets,
                security_groups=[endpoint_sg],
                private_dns_enabled=True,
                open=False,  # the shared group above already admits the VPC on 443
            )

    @property
    def app_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=APP)

    @property
    def worker_subnets(self) -> ec2.SubnetSelection:
        """The app subnets, or the public ones where there is no NAT gateway: the workers
        pull their image and call ECR, CloudWatch Logs, S3 and EventBridge themselves, with a
        public IP (their security group admits nothing inbound)."""
        return self.app_subnets if self.has_nat else ec2.SubnetSelection(subnet_group_name=PUBLIC)

    @property
    def data_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=DATA)


class NetworkStack(OffloadStack):
    """VPC, endpoints, flow logs and workload security groups."""

    def __init__(self, scope: Construct, id: str, *, config: EnvConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.network = Network(self, "Network", config=config.network)
