"""What every training file system shares, created here or imported: its attributes, its security
group and connections, and the mount path rule. ``TrainingFileSystem`` and the importer behind
``TrainingFileSystem.from_attributes`` both build on it, as aws-cdk-lib's ``LustreFileSystem``
and its ``Import`` build on ``FileSystemBase``."""

from __future__ import annotations

import abc
import re

import jsii
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_trn.errors import invalid

__all__ = ["TrainingFileSystemBase"]

_MOUNT_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")


@jsii.implements(ec2.IConnectable)
class TrainingFileSystemBase(Construct, metaclass=jsii.JSIIAbstractClass):
    """A Lustre file system clients mount (:class:`cdk_trn.interfaces.ITrainingFileSystem`)."""

    _file_system_id: str
    _dns_name: str
    _mount_name: str
    _mount_path: str
    _efa_enabled: bool
    _security_group: ec2.ISecurityGroup
    _connections: ec2.Connections

    def _describe(
        self,
        *,
        file_system_id: str,
        dns_name: str,
        mount_name: str,
        mount_path: str,
        efa_enabled: bool,
        security_group: ec2.ISecurityGroup,
    ) -> None:
        """Record the attributes every file system exposes (called once by the subclass)."""
        self._file_system_id = file_system_id
        self._dns_name = dns_name
        self._mount_name = mount_name
        self._mount_path = mount_path
        self._efa_enabled = efa_enabled
        self._security_group = security_group
        self._connections = ec2.Connections(security_groups=[security_group])

    @abc.abstractmethod
    def allow_clients(self, clients: ec2.IConnectable) -> None:
        """Let ``clients`` (for example the cluster) reach the file system's Lustre ports."""

    @staticmethod
    def _validate_mount_path(path: str) -> None:
        """``mount_path``: an absolute directory, safe in boot scripts and fstab."""
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or path == "/"
            or path.endswith("/")
            or "//" in path
            # Clients render the path into their boot scripts and fstab: letters, digits and
            # ._- only, so no quote or shell metacharacter reaches a shell.
            or not _MOUNT_PATH.fullmatch(path)
        ):
            raise invalid(
                "mount_path",
                path,
                "an absolute directory such as /fsx (letters, digits, '.', '_', '-' and '/')",
            )

    @property
    def connections(self) -> ec2.Connections:
        """The file system's security group. Has no default port: Lustre needs two port ranges,
        so use :meth:`allow_clients` rather than ``allow_default_port_from``."""
        return self._connections

    @property
    def security_group(self) -> ec2.ISecurityGroup:
        return self._security_group

    @property
    def file_system_id(self) -> str:
        return self._file_system_id

    @property
    def dns_name(self) -> str:
        return self._dns_name

    @property
    def mount_name(self) -> str:
        return self._mount_name

    @property
    def mount_path(self) -> str:
        """Where clients mount it, an absolute directory such as ``/fsx``."""
        return self._mount_path

    @property
    def efa_enabled(self) -> bool:
        return self._efa_enabled
