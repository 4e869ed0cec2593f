"""NeuronMachineImage: the node AMI, resolved at deploy time, never looked up at synth.

The default is the Neuron *base* DLAMI (Neuron driver, EFA, tools; no frameworks: the training
stack comes in the bundled container) on Amazon Linux 2023. AL2023 is the default because its
package repositories are S3 buckets reachable through the S3 gateway endpoint, so an air-gapped
node can still ``dnf install`` the Lustre client and Docker (FACTS.md, "Air-gapped nodes").
The image id comes from the public SSM parameter through a CloudFormation parameter of type
``AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>``, so it resolves when the stack deploys.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_trn.errors import invalid

_AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")


class NodeOs(enum.Enum):
    AMAZON_LINUX_2023 = "amazon-linux-2023"
    UBUNTU_24_04 = "ubuntu-24.04"


@dataclass(frozen=True)
class NeuronMachineImage:
    """Where the node AMI comes from.

    Build it with ``dlami()``, ``from_ssm_parameter()`` or ``from_ami_id()``.
    """

    os: NodeOs
    ssm_parameter: str | None = None
    ami_id: str | None = None

    @classmethod
    def dlami(
        cls, os: NodeOs = NodeOs.AMAZON_LINUX_2023, *, flavour: str = "base"
    ) -> NeuronMachineImage:
        """The latest Neuron DLAMI of ``flavour`` (``base`` or ``multi-framework``).

        ``multi-framework`` is published for Ubuntu 24.04 only (FACTS.md).
        """
        if flavour not in ("base", "multi-framework"):
            raise invalid("flavour", flavour, "'base' or 'multi-framework'")
        if flavour == "multi-framework" and os is not NodeOs.UBUNTU_24_04:
            raise invalid("os", os.value, "ubuntu-24.04 for the multi-framework DLAMI")
        return cls(
            os, ssm_parameter=f"/aws/service/neuron/dlami/{flavour}/{os.value}/latest/image_id"
        )

    @classmethod
    def from_ssm_parameter(
        cls, name: str, os: NodeOs = NodeOs.AMAZON_LINUX_2023
    ) -> NeuronMachineImage:
        if not name.startswith("/"):
            raise invalid("name", name, "an SSM parameter name starting with '/'")
        return cls(os, ssm_parameter=name)

    @classmethod
    def from_ami_id(cls, ami_id: str, os: NodeOs = NodeOs.AMAZON_LINUX_2023) -> NeuronMachineImage:
        if not _AMI_ID.match(ami_id):
            raise invalid("ami_id", ami_id, "an AMI id such as 'ami-0123456789abcdef0'")
        return cls(os, ami_id=ami_id)

    @classmethod
    def from_name(cls, os_name: str) -> NeuronMachineImage:
        names = {o.value: o for o in NodeOs}
        if os_name not in names:
            raise invalid("nodeOs", os_name, "one of " + ", ".join(names))
        return cls.dlami(names[os_name])

    def image_id(self, scope: Construct) -> str:
        """The AMI id for a launch template in ``scope`` (a deploy-time value for SSM sources)."""
        if self.ami_id is not None:
            return self.ami_id
        assert self.ssm_parameter is not None
        image = ec2.MachineImage.from_ssm_parameter(
            self.ssm_parameter, os=ec2.OperatingSystemType.LINUX
        )
        return image.get_image(scope).image_id
