"""FSx for Lustre for training: ``TrainingFileSystem`` and its importer.

Owns: the PERSISTENT file system (Lustre 2.15, customer-managed key, LZ4, automatic backups) in the
cluster's subnet, its security group (Lustre ports only, from the clients you allow) and the
validation of its props. What it shares with an imported file system is in
:mod:`~cdk_trn.storage.file_system_base`; the rest in one module per concern: the metadata
configuration (:mod:`~cdk_trn.storage.metadata`), the S3 data repository associations
(:mod:`~cdk_trn.storage.data_repository`), the Lustre ports (:mod:`~cdk_trn.storage.lustre_access`)
and the sizing of capacity and throughput (:mod:`~cdk_trn.storage.sizing`).

Facts: FSx for Lustre user guide and API reference (``CreateFileSystemLustreConfiguration``);
property names from the CloudFormation schema of ``AWS::FSx::FileSystem`` as shipped with
cfn-lint. See ``../shared/FACTS.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

import aws_cdk as cdk
import jsii
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk_trn._resources import stateful_removal_policy, whole_days
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn.interfaces import ITrainingFileSystem, ITrainingNetwork
from cdk_trn.storage import sizing
from cdk_trn.storage.data_repository import (
    DataRepositoryAssociation,
    cfn_data_repository_association,
    validate_associations,
)
from cdk_trn.storage.file_system_base import TrainingFileSystemBase
from cdk_trn.storage.lustre_access import (
    LUSTRE_PORT,
    LUSTRE_SERVER_PORTS,
    acknowledge_efa_rules,
    client_ports,
    construct_paths,
    new_ingress_rules,
)
from cdk_trn.storage.metadata import MetadataConfiguration

__all__ = ["DataCompression", "DeploymentType", "TrainingFileSystem"]

_BACKUP_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MAINTENANCE_TIME = re.compile(r"^[1-7]:([01]\d|2[0-3]):[0-5]\d$")
_FILE_SYSTEM_ID = re.compile(r"^fs-[0-9a-f]{8,21}$")
_SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$")
_MOUNT_NAME = re.compile(r"^[a-z0-9]{1,8}$")
_DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")


class DeploymentType(StrEnum):
    """Persistent deployment types; both take a customer-managed key and automatic backups.

    Scratch types are not offered: they always use an FSx-owned key and keep no backups.
    """

    PERSISTENT_1 = "PERSISTENT_1"
    PERSISTENT_2 = "PERSISTENT_2"


class DataCompression(StrEnum):
    """``LustreConfiguration.DataCompressionType``."""

    LZ4 = "LZ4"
    NONE = "NONE"


@jsii.implements(ec2.IConnectable)
class TrainingFileSystem(TrainingFileSystemBase):
    """FSx for Lustre file system for a training cluster.

    PERSISTENT_2 (Lustre 2.15) in one subnet, encrypted with a customer-managed key, LZ4
    compressed, backed up daily, retained on stack delete. Clients are let in with
    :meth:`allow_clients`; nothing else can reach it.

    :param network: the cluster's network (a ``TrainingNetwork`` or one from
        ``TrainingNetwork.from_attributes``); the file system is in its node subnet, and clients
        must be in the same Availability Zone.
    :param storage_capacity_gib: 1200, 2400 or a multiple of 2400 GiB.
        Default: 1200, or chosen by ``target_throughput_gbps``.
    :param per_unit_storage_throughput: MB/s per TiB; PERSISTENT_2: 125, 250, 500 or 1000;
        PERSISTENT_1: 50, 100 or 200. Default: 250 (PERSISTENT_2), 200 (PERSISTENT_1), or chosen
        by ``target_throughput_gbps``.
    :param target_throughput_gbps: aggregate GB/s wanted; capacity and per-unit throughput are
        then chosen by :func:`cdk_trn.storage.sizing.size_for_throughput` (see ``sizing``).
        Cannot be combined with the two props above. Default: None.
    :param min_capacity_gib: capacity floor for ``target_throughput_gbps`` (the data must fit).
        Default: 1200.
    :param deployment_type: Default: PERSISTENT_2.
    :param encryption_key: key for data at rest. Default: a new key, rotation on, retained.
    :param data_compression: ``LZ4`` or ``NONE``. Default: ``LZ4``.
    :param automatic_backup_retention: how long automatic backups are kept, whole days from 0
        (no automatic backups) to 90. Default: 7 days.
    :param daily_automatic_backup_start_time: ``HH:MM`` UTC. Default: None (FSx picks one).
    :param weekly_maintenance_start_time: ``d:HH:MM`` UTC, d = 1 (Monday) to 7.
        Default: None (FSx picks one).
    :param data_repository_associations: up to 8 links to S3. Default: none
        (see :func:`default_data_repository_associations`).
    :param efa_enabled: EFA (and GPUDirect Storage) support; PERSISTENT_2 with a metadata
        configuration only, fixed at creation. AWS recommends it above 10 GB/s. Default: False.
    :param metadata_configuration: PERSISTENT_2 metadata IOPS. Default: None (FSx default).
    :param destroy_on_delete: the explicit opt-out from retention: delete the file system, its
        data repository associations and a key this construct creates with the stack (the data
        not exported to S3 is lost). Default: False (retained on stack delete).
    :param mount_path: where clients mount the file system. Default: ``/fsx``.
    :param security_group: the file system's security group. Default: a new one, whose only
        inbound rules are the Lustre ports from itself (FSx servers talk to each other) and from
        the clients you allow.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        network: ITrainingNetwork,
        storage_capacity_gib: int | None = None,
        per_unit_storage_throughput: int | None = None,
        target_throughput_gbps: float | None = None,
        min_capacity_gib: int = sizing.MIN_CAPACITY_GIB,
        deployment_type: DeploymentType | str = DeploymentType.PERSISTENT_2,
        encryption_key: kms.IKey | None = None,
        data_compression: DataCompression | str = DataCompression.LZ4,
        automatic_backup_retention: cdk.Duration | None = None,
        daily_automatic_backup_start_time: str | None = None,
        weekly_maintenance_start_time: str | None = None,
        data_repository_associations: Sequence[DataRepositoryAssociation] = (),
        efa_enabled: bool = False,
        metadata_configuration: MetadataConfiguration | None = None,
        destroy_on_delete: bool = False,
        mount_path: str = "/fsx",
        security_group: ec2.ISecurityGroup | None = None,
    ) -> None:
        deployment = self._validate_deployment_type(deployment_type)
        self._sizing = self._validate_size(
            deployment,
            storage_capacity_gib,
            per_unit_storage_throughput,
            target_throughput_gbps,
            min_capacity_gib,
        )
        compression = self._validate_compression(data_compression)
        automatic_backup_retention_days = whole_days(
            "automatic_backup_retention",
            automatic_backup_retention
            if automatic_backup_retention is not None
            else cdk.Duration.days(7),
            minimum=0,
            maximum=90,
        )
        self._validate_backups(automatic_backup_retention_days, daily_automatic_backup_start_time)
        self._validate_maintenance_time(weekly_maintenance_start_time)
        associations = validate_associations(data_repository_associations)
        self._validate_efa(deployment, efa_enabled, metadata_configuration)
        removal_policy = stateful_removal_policy(destroy_on_delete)
        self._validate_mount_path(mount_path)
        super().__init__(scope, id)

        self._deployment_type = deployment
        self._efa_enabled = efa_enabled
        self._key: kms.IKey = encryption_key or kms.Key(
            self,
            "Key",
            description="cdk-trn FSx for Lustre file system key",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        self._security_group = security_group or ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description="FSx for Lustre: Lustre ports from allowed clients and between servers",
            # Outbound is open as in the FSx default: FSx servers answer and call back clients and
            # reach linked S3 buckets; who can reach the file system is decided by inbound rules.
            allow_all_outbound=True,
        )
        self_rules = self._allow_servers()

        # L1 because the L2 LustreFileSystem opens TCP 988-1023 inside its security group (Lustre
        # needs only 988 and 1018-1023) and has no props for EFA or the metadata configuration.
        self._file_system = fsx.CfnFileSystem(
            self,
            "FileSystem",
            file_system_type="LUSTRE",
            file_system_type_version="2.15",
            storage_type="SSD",
            storage_capacity=self._sizing.capacity_gib,
            subnet_ids=[network.subnet.subnet_id],
            security_group_ids=[self._security_group.security_group_id],
            kms_key_id=self._key.key_id,
            lustre_configuration=fsx.CfnFileSystem.LustreConfigurationProperty(
                deployment_type=deployment.value,
                per_unit_storage_throughput=self._sizing.per_unit_throughput,
                data_compression_type=compression.value,
                automatic_backup_retention_days=automatic_backup_retention_days,
                copy_tags_to_backups=True,
                daily_automatic_backup_start_time=daily_automatic_backup_start_time,
                weekly_maintenance_start_time=weekly_maintenance_start_time,
                efa_enabled=True if efa_enabled else None,
                metadata_configuration=metadata_configuration.to_cfn()
                if metadata_configuration is not None
                else None,
            ),
        )
        self._file_system.apply_removal_policy(removal_policy)
        for rule in self_rules:
            self._file_system.add_dependency(rule)
        self._describe(
            file_system_id=self._file_system.ref,
            dns_name=self._file_system.attr_dns_name,
            mount_name=self._file_system.attr_lustre_mount_name,
            mount_path=mount_path,
            efa_enabled=efa_enabled,
            security_group=self._security_group,
        )

        self._associations = associations
        self._cfn_associations = [
            cfn_data_repository_association(
                self,
                f"Association{index}",
                association,
                file_system_id=self._file_system.ref,
                removal_policy=removal_policy,
            )
            for index, association in enumerate(associations)
        ]

    @classmethod
    def from_attributes(
        cls,
        scope: Construct,
        id: str,
        *,
        file_system_id: str,
        dns_name: str,
        mount_name: str,
        security_group_id: str,
        mount_path: str = "/fsx",
        efa_enabled: bool = False,
    ) -> ITrainingFileSystem:
        """A file system another app created (and retains), by its attributes: no lookup.

        :param file_system_id: ``fs-...``.
        :param dns_name: the file system's DNS name (``DNSName`` of ``describe-file-systems``).
        :param mount_name: its Lustre mount name (``LustreConfiguration.MountName``).
        :param security_group_id: the file system's security group. It is not modified by this
            app except for the inbound rules :meth:`allow_clients` adds for the clients (written
            beside the clients, so they are deleted with them).
        :param mount_path: where clients mount it. Default: ``/fsx``.
        :param efa_enabled: whether the file system was created EFA-enabled. Default: False.
        """
        return _ImportedTrainingFileSystem(
            scope,
            id,
            file_system_id=file_system_id,
            dns_name=dns_name,
            mount_name=mount_name,
            security_group_id=security_group_id,
            mount_path=mount_path,
            efa_enabled=efa_enabled,
        )

    # -- validation (before any resource) ------------------------------------------------------

    @staticmethod
    def _validate_deployment_type(value: DeploymentType | str) -> DeploymentType:
        try:
            return DeploymentType(value)
        except ValueError:
            raise invalid(
                "deployment_type",
                value,
                "PERSISTENT_2 or PERSISTENT_1 (scratch file systems cannot use a customer-managed "
                "key and keep no backups)",
            ) from None

    @staticmethod
    def _validate_size(
        deployment: DeploymentType,
        capacity: int | None,
        per_unit: int | None,
        target_gbps: float | None,
        min_capacity_gib: int,
    ) -> sizing.SizingChoice:
        tiers = (
            sizing.PERSISTENT_2_THROUGHPUT_TIERS
            if deployment is DeploymentType.PERSISTENT_2
            else sizing.PERSISTENT_1_THROUGHPUT_TIERS
        )
        if target_gbps is not None:
            if capacity is not None or per_unit is not None:
                raise CdkTrnError(
                    "target_throughput_gbps chooses storage_capacity_gib and "
                    "per_unit_storage_throughput; set either the target or those two, got "
                    f"target_throughput_gbps={target_gbps!r}, storage_capacity_gib={capacity!r}, "
                    f"per_unit_storage_throughput={per_unit!r}"
                )
            return sizing.size_for_throughput(
                target_gbps, min_capacity_gib=min_capacity_gib, tiers=tiers
            )
        capacity = sizing.MIN_CAPACITY_GIB if capacity is None else capacity
        if per_unit is None:
            per_unit = 250 if deployment is DeploymentType.PERSISTENT_2 else 200
        if cdk.Token.is_unresolved(capacity) or cdk.Token.is_unresolved(per_unit):
            raise CdkTrnError(
                "storage_capacity_gib and per_unit_storage_throughput must be known at synth "
                "(they size the file system and its summary), got a token"
            )
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not sizing.is_valid_capacity(capacity)
        ):
            raise invalid("storage_capacity_gib", capacity, "1200, 2400 or a multiple of 2400 GiB")
        if isinstance(per_unit, bool) or per_unit not in tiers:
            allowed = ", ".join(str(t) for t in tiers[:-1]) + f" or {tiers[-1]}"
            raise invalid(
                "per_unit_storage_throughput",
                per_unit,
                f"{allowed} MB/s/TiB for {deployment.value}",
            )
        return sizing.describe_size(capacity, per_unit)

    @staticmethod
    def _validate_compression(value: DataCompression | str) -> DataCompression:
        try:
            return DataCompression(value)
        except ValueError:
            raise invalid("data_compression", value, "LZ4 or NONE") from None

    @staticmethod
    def _validate_backups(retention_days: int, start_time: str | None) -> None:
        if start_time is not None:
            if not isinstance(start_time, str) or not _BACKUP_TIME.match(start_time):
                raise invalid("daily_automatic_backup_start_time", start_time, "HH:MM (UTC)")
            if retention_days == 0:
                raise invalid(
                    "daily_automatic_backup_start_time",
                    start_time,
                    "unset when automatic_backup_retention is 0 days",
                )

    @staticmethod
    def _validate_maintenance_time(value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not _MAINTENANCE_TIME.match(value)):
            raise invalid(
                "weekly_maintenance_start_time", value, "d:HH:MM (UTC, d = 1 Monday to 7 Sunday)"
            )

    @staticmethod
    def _validate_efa(
        deployment: DeploymentType,
        efa_enabled: bool,
        metadata_configuration: MetadataConfiguration | None,
    ) -> None:
        if metadata_configuration is not None:
            if not isinstance(metadata_configuration, MetadataConfiguration):
                raise invalid(
                    "metadata_configuration", metadata_configuration, "a MetadataConfiguration"
                )
            if deployment is not DeploymentType.PERSISTENT_2:
                raise invalid(
                    "metadata_configuration",
                    metadata_configuration,
                    f"unset for {deployment.value} "
                    "(only PERSISTENT_2 has a metadata configuration)",
                )
        if not isinstance(efa_enabled, bool):
            raise invalid("efa_enabled", efa_enabled, "True or False")
        if efa_enabled and deployment is not DeploymentType.PERSISTENT_2:
            raise invalid(
                "efa_enabled",
                efa_enabled,
                f"False for {deployment.value} (EFA needs PERSISTENT_2 with a metadata "
                "configuration)",
            )
        if efa_enabled and metadata_configuration is None:
            raise invalid(
                "efa_enabled",
                efa_enabled,
                "False unless metadata_configuration is set (EFA needs PERSISTENT_2 with a "
                "metadata configuration, e.g. MetadataConfiguration.automatic())",
            )

    # -- resources ------------------------------------------------------------------------------

    def _allow_servers(self) -> list[cdk.CfnResource]:
        """Self rules: Lustre servers talk to each other; EFA needs all traffic within the group.

        Written as L1 rules so that the file system can depend on each one: FSx checks the group
        when it creates the file system, and a rule that does not exist yet fails the creation
        intermittently (ParallelCluster issue 6181, fixed the same way in PR 6342).
        """
        group_id = self._security_group.security_group_id
        rules: list[cdk.CfnResource] = []
        if self._efa_enabled:
            rules.append(
                ec2.CfnSecurityGroupIngress(
                    self,
                    "EfaSelfIngress",
                    group_id=group_id,
                    ip_protocol="-1",
                    source_security_group_id=group_id,
                    description="EFA between FSx servers",
                )
            )
            acknowledge_efa_rules(rules)
            # EFA checks for an explicit self egress rule even when all outbound is allowed.
            rules.append(
                ec2.CfnSecurityGroupEgress(
                    self,
                    "EfaSelfEgress",
                    group_id=group_id,
                    ip_protocol="-1",
                    destination_security_group_id=group_id,
                    description="EFA between FSx servers",
                )
            )
            return rules
        for name, (from_port, to_port) in (
            ("LustreSelfIngress", (LUSTRE_PORT, LUSTRE_PORT)),
            ("LustreServersSelfIngress", LUSTRE_SERVER_PORTS),
        ):
            ports = f"{from_port}" if from_port == to_port else f"{from_port}-{to_port}"
            rules.append(
                ec2.CfnSecurityGroupIngress(
                    self,
                    name,
                    group_id=group_id,
                    ip_protocol="tcp",
                    from_port=from_port,
                    to_port=to_port,
                    source_security_group_id=group_id,
                    description=f"Lustre {ports} between FSx servers",
                )
            )
        return rules

    def allow_clients(self, clients: ec2.IConnectable) -> None:
        """Let ``clients`` (for example the cluster) mount the file system.

        Non-EFA: TCP 988 and 1018-1023 in both directions between the clients' security groups and
        the file system's (FSx for Lustre user guide, "File system access control with Amazon VPC").
        EFA-enabled: all traffic in both directions, as FSx requires for EFA clients in another
        security group (user guide, "EFA-enabled security groups").

        The rules are written from the clients' side, so when the clients live in another stack
        (the cluster stack) the rules live there too, and that stack depends on this one.
        """
        groups = [*clients.connections.security_groups, self._security_group]
        before = construct_paths(groups)
        ports = client_ports(self._efa_enabled)
        for port in ports:
            ports_text = port.to_string()
            clients.connections.allow_to(
                self._connections, port, f"Lustre clients to FSx {ports_text}"
            )
            clients.connections.allow_from(
                self._connections, port, f"FSx to Lustre clients {ports_text}"
            )
        if self._efa_enabled:
            acknowledge_efa_rules(new_ingress_rules(groups, before))

    # -- properties -----------------------------------------------------------------------------

    @property
    def file_system(self) -> fsx.CfnFileSystem:
        """The ``AWS::FSx::FileSystem`` resource."""
        return self._file_system

    @property
    def data_repository_associations(self) -> tuple[DataRepositoryAssociation, ...]:
        return self._associations

    @property
    def cfn_data_repository_associations(self) -> list[fsx.CfnDataRepositoryAssociation]:
        return list(self._cfn_associations)

    @property
    def deployment_type(self) -> DeploymentType:
        return self._deployment_type

    @property
    def storage_capacity_gib(self) -> int:
        return self._sizing.capacity_gib

    @property
    def per_unit_storage_throughput(self) -> int:
        """MB/s per TiB."""
        return self._sizing.per_unit_throughput

    @property
    def throughput_gbps(self) -> float:
        """Aggregate baseline throughput, GB/s (decimal)."""
        return self._sizing.throughput_gbps

    @property
    def sizing_choice(self) -> sizing.SizingChoice:
        """Capacity, tier, throughput and why they were chosen (for the synth summary)."""
        return self._sizing

    def throughput_per_node_gbps(self, nodes: int) -> float:
        """Fair share of :attr:`throughput_gbps` per client node when ``nodes`` read at once."""
        return sizing.throughput_per_node_gbps(self._sizing, nodes)

    @property
    def encryption_key(self) -> kms.IKey:
        return self._key


@jsii.implements(ec2.IConnectable)
class _ImportedTrainingFileSystem(TrainingFileSystemBase):
    """A file system created elsewhere, from :meth:`TrainingFileSystem.from_attributes`.

    Its security group is imported immutable: nothing in this app changes its rules through the
    group itself. :meth:`allow_clients` writes the clients' inbound rules on that group as
    ``AWS::EC2::SecurityGroupIngress`` resources beside the clients (in the cluster's stack), so
    they come and go with the cluster and the app that owns the file system never sees them.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        file_system_id: str,
        dns_name: str,
        mount_name: str,
        security_group_id: str,
        mount_path: str = "/fsx",
        efa_enabled: bool = False,
    ) -> None:
        _validate_attribute("file_system_id", file_system_id, _FILE_SYSTEM_ID, "an id fs-...")
        _validate_attribute(
            "security_group_id", security_group_id, _SECURITY_GROUP_ID, "an id sg-..."
        )
        _validate_attribute(
            "mount_name", mount_name, _MOUNT_NAME, "the Lustre mount name, 1-8 of a-z 0-9"
        )
        _validate_attribute("dns_name", dns_name, _DNS_NAME, "the file system's DNS name")
        self._validate_mount_path(mount_path)
        if not isinstance(efa_enabled, bool):
            raise invalid("efa_enabled", efa_enabled, "True or False")
        super().__init__(scope, id)
        self._describe(
            file_system_id=file_system_id,
            dns_name=dns_name,
            mount_name=mount_name,
            mount_path=mount_path,
            efa_enabled=efa_enabled,
            security_group=ec2.SecurityGroup.from_security_group_id(
                self, "SecurityGroup", security_group_id, mutable=False
            ),
        )

    def allow_clients(self, clients: ec2.IConnectable) -> None:
        """Let ``clients`` mount the file system: the Lustre ports (all traffic when EFA-enabled)
        into the file system's group from each of the clients' groups, and the clients' side
        (outbound to and inbound from the file system's group) on the clients' groups."""
        scope = clients if isinstance(clients, Construct) else self
        group_id = self._security_group.security_group_id
        groups = list(clients.connections.security_groups)
        before = construct_paths(groups) | {child.node.path for child in scope.node.find_all()}
        for group in clients.connections.security_groups:
            for port in client_ports(self._efa_enabled):
                rule = port.to_rule_json()
                rule_id = f"FsxIngress{cdk.Names.unique_id(self)}{cdk.Names.unique_id(group)}"
                rule_id += f"{rule.get('fromPort', 'All')}"
                if scope.node.try_find_child(rule_id) is not None:
                    continue
                ec2.CfnSecurityGroupIngress(
                    scope,
                    rule_id,
                    group_id=group_id,
                    source_security_group_id=group.security_group_id,
                    ip_protocol=rule["ipProtocol"],
                    from_port=rule.get("fromPort"),
                    to_port=rule.get("toPort"),
                    description=f"Lustre clients to FSx {port.to_string()}",
                )
        for port in client_ports(self._efa_enabled):
            # The file system's own group is immutable, so only the clients' rules are written.
            clients.connections.allow_to(
                self._connections, port, f"Lustre clients to FSx {port.to_string()}"
            )
            clients.connections.allow_from(
                self._connections, port, f"FSx to Lustre clients {port.to_string()}"
            )
        if self._efa_enabled:
            added = new_ingress_rules(groups, before)
            added += [
                child
                for child in scope.node.find_all()
                if isinstance(child, ec2.CfnSecurityGroupIngress) and child.node.path not in before
            ]
            acknowledge_efa_rules(dict.fromkeys(added))


def _validate_attribute(prop: str, value: str, pattern: re.Pattern[str], allowed: str) -> None:
    if isinstance(value, str) and cdk.Token.is_unresolved(value):
        return
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(prop, value, allowed)
