"""EfaSecurityGroup: the node security group that EFA requires, and nothing more.

EFA needs all traffic allowed inbound AND outbound to and from the group itself; without the
egress self-rule EFA fails even when 0.0.0.0/0 egress exists (EFA user guide, FACTS.md). Nothing
else may reach the nodes. Egress is limited to the group itself and HTTPS for the AWS endpoints;
other egress (FSx ports, the enclave vault) is added by the constructs that need it through
``connections``.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk_trn._resources import ManagedPolicyRole
from cdk_trn.compliance import acknowledge_regulated, acknowledge_wildcards


class EfaSecurityGroup(ec2.SecurityGroup):
    """A security group for EFA-wired training nodes.

    :param vpc: the VPC of the nodes.
    :param https_egress_peer: where nodes may open HTTPS connections. Default: anywhere
        (``0.0.0.0/0``); in the default isolated subnet the only routes are the VPC (interface
        endpoints) and the S3 gateway endpoint, so this reaches AWS APIs only. Pass the S3 managed
        prefix list of the region (``ec2.Peer.prefix_list('pl-...')``) to narrow it further; its id
        is account-independent but can only be looked up, which synth never does.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        https_egress_peer: ec2.IPeer | None = None,
        description: str = "Trainium nodes: all traffic within the group (EFA), HTTPS to AWS",
    ) -> None:
        super().__init__(scope, id, vpc=vpc, description=description, allow_all_outbound=False)
        self.add_ingress_rule(self, ec2.Port.all_traffic(), "EFA and collectives within the group")
        (self_ingress,) = [
            c for c in self.node.children if isinstance(c, ec2.CfnSecurityGroupIngress)
        ]
        # The regulated packs' "restricted common ports" rule flags any all-traffic ingress,
        # whatever its source.
        acknowledge_regulated(
            self_ingress,
            "EC2RestrictedCommonPorts",
            "EFA requires all traffic between the nodes; the only source of this rule is "
            "the group itself, never an address range",
        )
        self.add_egress_rule(self, ec2.Port.all_traffic(), "EFA and collectives within the group")
        self.add_egress_rule(
            https_egress_peer or ec2.Peer.any_ipv4(),
            ec2.Port.tcp(443),
            "HTTPS to AWS endpoints (VPC interface endpoints and the S3 gateway)",
        )


#: What the SSM agent calls (Session Manager, Run Command, its heartbeat): the statements of the
#: AWS managed policy AmazonSSMManagedInstanceCore without ``ssm:GetParameter`` and
#: ``ssm:GetParameters``, which that policy grants on every parameter of the account. The
#: instance's own parameter reads are granted by the constructs that own those parameters.
SSM_AGENT_ACTIONS = (
    "ssm:DescribeAssociation",
    "ssm:GetDeployablePatchSnapshotForInstance",
    "ssm:GetDocument",
    "ssm:DescribeDocument",
    "ssm:GetManifest",
    "ssm:ListAssociations",
    "ssm:ListInstanceAssociations",
    "ssm:PutInventory",
    "ssm:PutComplianceItems",
    "ssm:PutConfigurePackageResult",
    "ssm:UpdateAssociationStatus",
    "ssm:UpdateInstanceAssociationStatus",
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)


#: The id of the SSM agent's policy under a :func:`signalling_instance_role`.
SSM_AGENT_POLICY_ID = "SsmAgentPolicy"


def ssm_agent_policy(scope: Construct, id: str, role: iam.IRole) -> iam.ManagedPolicy:
    """A customer-managed policy with :data:`SSM_AGENT_ACTIONS`, attached to ``role``, with its
    own wildcard acknowledgment (acknowledge the role's other wildcards on its own policy,
    ``role.managed_policy``, not on the role, or they would cover this one too)."""
    policy = iam.ManagedPolicy(
        scope,
        id,
        description="SSM agent (Session Manager, Run Command) without parameter reads",
        statements=[iam.PolicyStatement(actions=list(SSM_AGENT_ACTIONS), resources=["*"])],
        roles=[role],
    )
    acknowledge_wildcards(
        policy,
        "the SSM agent's calls (AmazonSSMManagedInstanceCore's list minus ssm:GetParameter(s)) "
        "act on the calling instance or on documents chosen at run time; the ssmmessages and "
        "ec2messages actions support no resource-level permission, so the resource is '*'",
        resources=["*"],
    )
    return policy


def signalling_instance_role(scope: Construct, id: str, *, description: str) -> ManagedPolicyRole:
    """The role of an instance that boots, signals its creation policy and runs the SSM agent
    (Trainium nodes, the Slurm controller): a ``ManagedPolicyRole``, so SignalResource on this
    stack and every grant other constructs add land in its customer-managed policy, and the
    agent's policy is a second one, under the role too.

    Everything an instance needs from boot on is under the role, so whatever launches the
    instances depends on the role: an L2 ``ec2.LaunchTemplate(role=...)`` does by itself, an L1
    group or template needs ``node.add_dependency(role)``. A policy that names the group (its
    ARN) must live beside the role instead, or the dependency would be a cycle."""
    role = ManagedPolicyRole(
        scope, id, assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"), description=description
    )
    ssm_agent_policy(role, SSM_AGENT_POLICY_ID, role)
    role.add_to_policy(
        # As narrow as IAM allows: SignalResource's only resource type is the stack, and no
        # condition key names the logical resource or the unique id, so an instance of this
        # stack could signal for another resource of it; nothing outside the stack.
        iam.PolicyStatement(actions=["cloudformation:SignalResource"], resources=[cdk.Aws.STACK_ID])
    )
    return role
