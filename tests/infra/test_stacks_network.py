"""Network: subnets over two AZs, NAT count per environment, endpoints, flow logs."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match

from tests.infra.conftest import Synth


def test_three_subnet_tiers_in_two_azs(each_env: Synth) -> None:
    """Public, App, Data in two AZs; without NAT (dev) the App subnets are isolated too."""
    stack = each_env.stacks.network
    subnets = each_env.resources(stack, "AWS::EC2::Subnet")
    tiers: dict[str, list] = {}
    for subnet in subnets.values():
        tags = {t["Key"]: t["Value"] for t in subnet["Properties"]["Tags"]}
        tiers.setdefault(tags["aws-cdk:subnet-type"], []).append(subnet)
        assert tags["aws-cdk:subnet-name"] in ("Public", "App", "Data")
    expected = (
        {"Public": 2, "Isolated": 4}
        if each_env.env == "dev"
        else {"Public": 2, "Private": 2, "Isolated": 2}
    )
    assert {name: len(group) for name, group in tiers.items()} == expected
    azs = {json.dumps(s["Properties"]["AvailabilityZone"]) for s in tiers["Isolated"]}
    assert len(azs) == 2


def test_no_nat_gateway_in_dev_two_in_prod(dev: Synth, prod: Synth) -> None:
    """network.natGateways: 0 in dev (the workers go out through the internet gateway with
    their own public IP: test_stacks_workers.py), one per AZ in prod."""
    dev.template(dev.stacks.network).resource_count_is("AWS::EC2::NatGateway", 0)
    dev.template(dev.stacks.network).resource_count_is("AWS::EC2::EIP", 0)
    prod.template(prod.stacks.network).resource_count_is("AWS::EC2::NatGateway", 2)
    # no route out of dev's app subnets at all
    for route in dev.resources(dev.stacks.network, "AWS::EC2::Route").values():
        assert "AppSubnet" not in json.dumps(route["Properties"]["RouteTableId"])


def test_isolated_subnets_have_no_route_to_the_internet(dev: Synth) -> None:
    routes = dev.resources(dev.stacks.network, "AWS::EC2::Route")
    for route in routes.values():
        table = json.dumps(route["Properties"]["RouteTableId"])
        if "DataSubnet" in table:
            assert "NatGatewayId" not in route["Properties"]
            assert "GatewayId" not in route["Properties"]


def test_without_nat_only_the_s3_gateway_and_one_secrets_manager_endpoint(dev: Synth) -> None:
    """network.interfaceEndpoints: false and no NAT in dev: the Lambdas in the isolated app
    subnets reach S3 by the free gateway endpoint (routed from every subnet) and Secrets
    Manager (the migrations and the rotation read the master secret) by one interface
    endpoint in one AZ; everything else they use is inside the VPC or signed locally."""
    found = dev.resources(dev.stacks.network, "AWS::EC2::VPCEndpoint").values()
    endpoints = [e["Properties"] for e in found]
    kinds = sorted(e.get("VpcEndpointType", "Gateway") for e in endpoints)
    assert kinds == ["Gateway", "Interface"]
    [gateway] = [e for e in endpoints if e.get("VpcEndpointType", "Gateway") == "Gateway"]
    assert ".s3" in json.dumps(gateway["ServiceName"])
    tables = json.dumps(gateway["RouteTableIds"])
    assert "AppSubnet1" in tables and "AppSubnet2" in tables
    [interface] = [e for e in endpoints if e.get("VpcEndpointType") == "Interface"]
    assert "secretsmanager" in json.dumps(interface["ServiceName"])
    assert interface["PrivateDnsEnabled"] is True
    assert len(interface["SubnetIds"]) == 1
    assert "AppSubnet1" in json.dumps(interface["SubnetIds"])


def test_gateway_and_interface_endpoints(prod: Synth) -> None:
    endpoints = prod.resources(prod.stacks.network, "AWS::EC2::VPCEndpoint")
    services = {}
    for endpoint in endpoints.values():
        props = endpoint["Properties"]
        name = json.dumps(props["ServiceName"])
        services[name] = props.get("VpcEndpointType", "Gateway")
    gateway = [n for n, kind in services.items() if kind == "Gateway"]
    assert len(gateway) == 1 and ".s3" in gateway[0]
    interface = " ".join(n for n, kind in services.items() if kind == "Interface")
    for service in ("ecr.api", "ecr.dkr", "logs", "secretsmanager", "sqs", "monitoring"):
        assert f".{service}" in interface, service
    for endpoint in endpoints.values():
        if endpoint["Properties"].get("VpcEndpointType") == "Interface":
            assert endpoint["Properties"]["PrivateDnsEnabled"] is True


def test_endpoint_security_group_admits_only_https_from_the_vpc(prod: Synth) -> None:
    template = prod.template(prod.stacks.network)
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": Match.string_like_regexp("Interface endpoints"),
            "SecurityGroupIngress": [
                Match.object_like({"CidrIp": "10.41.0.0/16", "FromPort": 443, "ToPort": 443})
            ],
        },
    )


def test_flow_logs_to_a_log_group_with_retention(dev: Synth, prod: Synth) -> None:
    for synth, days in ((dev, 7), (prod, 90)):
        template = synth.template(synth.stacks.network)
        template.has_resource_properties(
            "AWS::EC2::FlowLog",
            {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"},
        )
        template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": days})


def test_workers_reach_only_https_redis_and_postgres(each_env: Synth) -> None:
    """The workers run hostile files' processing: no egress on every port to everywhere."""
    stack = each_env.stacks.network
    groups = each_env.resources(stack, "AWS::EC2::SecurityGroup")
    workers = next(
        g["Properties"] for g in groups.values()
        if g["Properties"]["GroupDescription"] == "offload Fargate workers"
    )  # fmt: skip
    egress = workers["SecurityGroupEgress"]
    assert all(rule["IpProtocol"] == "tcp" for rule in egress), egress
    anywhere = [rule for rule in egress if rule.get("CidrIp") == "0.0.0.0/0"]
    assert [(r["FromPort"], r["ToPort"]) for r in anywhere] == [(443, 443)]
    inside = [rule for rule in egress if rule.get("CidrIp") != "0.0.0.0/0"]
    assert sorted({r["FromPort"] for r in inside}) == [5432, 6379]
    assert all(r["FromPort"] == r["ToPort"] for r in inside)
    assert len(inside) == 4  # two data subnets, two ports
