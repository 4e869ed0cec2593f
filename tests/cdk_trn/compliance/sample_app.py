"""A small app wired like ``app.py``, for the compliance tests (run in-process or as a process).

``python -m tests.cdk_trn.compliance.sample_app --outdir DIR [--broken]``: the clean stack is a
Trainium launch template with its EFA security group and a KMS key, which pass all five packs (three
findings acknowledged with reasons); ``--broken`` adds a security group open to 0.0.0.0/0 on
port 22. Exit 1 with the findings on stderr when the compliance check fails.
"""

from __future__ import annotations

import argparse
import sys

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms

from cdk_trn.catalog import instance_spec
from cdk_trn.compliance import ComplianceError, acknowledge, enable_compliance, synth_checked

ENV = cdk.Environment(account="111111111111", region="us-east-2")
VPC_ID = "vpc-0123456789abcdef0"
EFA_REASON = (
    "EFA needs all traffic from the group itself; the rule flags protocol -1 whatever the "
    "source, and the source here is the group, not a CIDR"
)


def build_clean_stack(app: cdk.App, stack_id: str = "Clean") -> cdk.Stack:
    stack = cdk.Stack(app, stack_id, env=ENV)
    key = kms.Key(stack, "VolumeKey", enable_key_rotation=True, description="node volumes")
    group = ec2.CfnSecurityGroup(
        stack,
        "EfaGroup",
        group_description="EFA traffic between training nodes",
        vpc_id=VPC_ID,
        security_group_egress=[
            ec2.CfnSecurityGroup.EgressProperty(
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                cidr_ip="10.0.0.0/16",
                description="VPC endpoints",
            )
        ],
    )
    self_in = ec2.CfnSecurityGroupIngress(
        stack,
        "EfaSelfIn",
        group_id=group.attr_group_id,
        source_security_group_id=group.attr_group_id,
        ip_protocol="-1",
        description="EFA from the group itself",
    )
    ec2.CfnSecurityGroupEgress(
        stack,
        "EfaSelfOut",
        group_id=group.attr_group_id,
        destination_security_group_id=group.attr_group_id,
        ip_protocol="-1",
        description="EFA to the group itself",
    )
    for pack in ("NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321"):
        acknowledge(self_in, f"{pack}-EC2RestrictedCommonPorts", EFA_REASON)
    spec = instance_spec("trn2.48xlarge")
    groups = [group.attr_group_id]
    interfaces = [
        {
            "NetworkCardIndex": 0,
            "DeviceIndex": 0,
            "Groups": groups,
            "AssociatePublicIpAddress": False,
        }
    ] + [
        {"NetworkCardIndex": c, "DeviceIndex": 1, "Groups": groups, "InterfaceType": "efa-only"}
        for c in range(spec.network_cards)
    ]
    template = ec2.CfnLaunchTemplate(stack, "NodeLaunchTemplate", launch_template_data={})
    # Sixteen interfaces in raw CloudFormation shape, as cdk_trn.launch_template writes them.
    template.add_property_override(
        "LaunchTemplateData",
        {
            "InstanceType": spec.instance_type,
            "ImageId": "ami-0123456789abcdef0",
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/xvda",
                    "Ebs": {"Encrypted": True, "KmsKeyId": key.key_arn, "VolumeType": "gp3"},
                }
            ],
            "NetworkInterfaces": interfaces,
        },
    )
    return stack


def add_open_ssh(stack: cdk.Stack) -> ec2.CfnSecurityGroup:
    return ec2.CfnSecurityGroup(
        stack,
        "OpenSsh",
        group_description="SSH from anywhere (the violation under test)",
        vpc_id=VPC_ID,
        security_group_ingress=[
            ec2.CfnSecurityGroup.IngressProperty(
                ip_protocol="tcp", from_port=22, to_port=22, cidr_ip="0.0.0.0/0"
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--broken", action="store_true")
    args = parser.parse_args(argv)
    app = cdk.App(outdir=args.outdir)
    enable_compliance(app)
    stack = build_clean_stack(app)
    if args.broken:
        add_open_ssh(stack)
    # The lines app.py needs: synthesize, fail on open findings, print the summary.
    try:
        report = synth_checked(app)
    except ComplianceError as error:
        print(f"cdk-trn: {error}", file=sys.stderr)
        return 1
    print(report.format_summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
