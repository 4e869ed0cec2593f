"""What a cluster needs of a network and of a shared file system, new or imported.

``TrainingNetwork`` and ``TrainingFileSystem`` satisfy these protocols, and so do the objects
their ``from_attributes`` importers return, so a second app can attach a new ``TrainiumCluster``
to a network and a file system that another app created (and retains).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aws_cdk import aws_ec2 as ec2


class ITrainingNetwork(Protocol):
    """A single-AZ network: the VPC, the node subnet in the chosen AZ, and its endpoints."""

    @property
    def vpc(self) -> ec2.IVpc: ...

    @property
    def subnet(self) -> ec2.ISubnet:
        """The node subnet, in :attr:`availability_zone`."""
        ...

    @property
    def availability_zone(self) -> str:
        """The AZ as given: an AZ id (``use2-az3``) or an AZ name (``us-east-2b``)."""
        ...

    @property
    def endpoints(self) -> Sequence[ec2.IVpcEndpoint]:
        """VPC endpoints created with this network, which nodes wait for (none when imported)."""
        ...


class ITrainingFileSystem(Protocol):
    """A Lustre file system the cluster mounts on every node and lets its nodes reach."""

    @property
    def file_system_id(self) -> str: ...

    @property
    def dns_name(self) -> str: ...

    @property
    def mount_name(self) -> str: ...

    @property
    def mount_path(self) -> str:
        """Where clients mount it, an absolute directory such as ``/fsx``."""
        ...

    @property
    def efa_enabled(self) -> bool: ...

    @property
    def security_group(self) -> ec2.ISecurityGroup: ...

    @property
    def connections(self) -> ec2.Connections: ...

    def allow_clients(self, clients: ec2.IConnectable) -> None:
        """Let ``clients`` (for example the cluster) reach the file system's Lustre ports."""
        ...
