"""TrainiumCluster: N Trainium nodes in one AZ, every network card on EFA, proven healthy at boot.

Composes the building blocks: the catalog's ``InstanceSpec``, an ``EfaSecurityGroup``, the node
role, the EFA launch template, the ``Capacity`` choice (placement group, reservation or capacity
block) and an Auto Scaling group with min = max = desired = N whose creation policy waits for N
success signals. Each node sends its signal only after
``cdk_trn_runtime/node/node_bootstrap.sh`` verified the catalog's Neuron and EFA device counts,
Docker, the FSx mount and its UltraServer ids and, when a ``SlurmScheduler`` (``cdk_trn.scheduler``)
serves the cluster, after its slurmd registered with the controller.
The template's size does not depend on N: one launch template and one group serve 1 or 256 nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from cdk_trn._boot import BootBundle
from cdk_trn._metrics_policy import PUT_METRIC_DATA_WILDCARD_REASON, put_metric_data_statement
from cdk_trn._outputs import add_outputs, claim_stack
from cdk_trn._resources import (
    ManagedPolicyRole,
    allow_cloudwatch_logs,
    stateful_removal_policy,
)
from cdk_trn.alarm_topic import ClusterEventsTopic, validate_alarm_email
from cdk_trn.capacity import Capacity
from cdk_trn.catalog import (
    InstanceSpec,
    Price,
    instance_price,
    instance_spec,
    validate_hourly_price,
)
from cdk_trn.compliance import acknowledge_wildcards
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn.interfaces import ITrainingFileSystem, ITrainingNetwork
from cdk_trn.launch_template import (
    EfaInterfaceMode,
    node_launch_template,
    reservation_group_of,
)
from cdk_trn.machine_image import NeuronMachineImage
from cdk_trn.network import INTERFACE_ENDPOINTS
from cdk_trn.preflight import Preflight
from cdk_trn.security import EfaSecurityGroup, signalling_instance_role
from cdk_trn_runtime.contract import (
    CLUSTER_TAG,
    METRICS_NAMESPACE_NODE,
    NODE_BOOT_MINUTES,
    OUTPUT_CLUSTER_NAME,
    OUTPUT_NODE_HOURLY_PRICE,
    RENDEZVOUS_PORTS,
    vault_url_parameter,
)
from cdk_trn_runtime.contract.boot import NodeBoot

MAX_NODES = 1024
# NODE_BOOT_MINUTES (contract) bounds the replacements after a retryable boot failure
# (``fail_retryable``, ``cdk_trn_runtime/node/boot_common.sh``): a node is replaced only while
# another boot fits in the signal timeout, so each node slot boots at most timeout / boot times
# while the group is created (3 with the default 45 minutes).
_CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}$")


@dataclass(frozen=True)
class SlurmNodeSettings:
    """What a node needs to run slurmd; ``SlurmScheduler`` hands it to the cluster it serves.

    :param image_uri: the image slurmd (and every job) runs in.
    :param key_secret_arn: the Secrets Manager secret holding the munge key.
    :param controller_parameter: the SSM parameter holding the controller's current address.
    :param features: the node's static Slurm features (instance type, ``efa``); the node adds its
        UltraServer id itself.
    :param registration_seconds: how long a booting node waits for its slurmd to register.
    """

    image_uri: str
    key_secret_arn: str
    controller_parameter: str
    features: str
    registration_seconds: int


@jsii.implements(cdk.IStableStringProducer)
class _UserData:
    """The node user data, rendered at synth so that a scheduler attached after the cluster's
    construction (``SlurmScheduler(cluster=...)``) is part of it."""

    def __init__(self, cluster: TrainiumCluster) -> None:
        self._cluster = cluster

    def produce(self) -> str:
        return self._cluster._user_data()


class TrainiumCluster(Construct):
    """A Trainium training cluster.

    :param network: the single-AZ network the nodes live in: a ``TrainingNetwork``, or one
        another app created, from ``TrainingNetwork.from_attributes``.
    :param instance_type: a catalog type. Default: ``trn2.48xlarge``.
    :param nodes: node count, 1..1024. Default: 2.
    :param capacity: where capacity comes from. Default: ``Capacity.on_demand()`` (cluster
        placement group).
    :param machine_image: node AMI. Default: the Neuron base DLAMI on Amazon Linux 2023,
        resolved from its public SSM parameter at deploy time.
    :param file_system: shared file system to mount on every node (and to hold the compile cache):
        a ``TrainingFileSystem``, or one another app created, from
        ``TrainingFileSystem.from_attributes``. Default: none (compile cache on the root volume).
    :param cluster_name: name tagged on every resource (``cdk-trn:cluster``). Default: the
        construct path, lower-cased.
    :param interface_mode: EFA interface layout. Default: ``EfaInterfaceMode.EFA_ONLY``.
    :param root_volume_gib: root volume size (gp3, encrypted). Default: 512 GiB.
    :param encryption_key: customer-managed KMS key for the root volumes. Its key policy must let
        the Auto Scaling service-linked role (AWSServiceRoleForAutoScaling) use it (CreateGrant,
        Decrypt, GenerateDataKey*, ReEncrypt*; EC2 Auto Scaling user guide, key policy for
        encrypted volumes), or launches fail. Default: the account's default EBS key.
    :param signal_timeout: how long the deploy waits for all nodes' health signals. Default: 45 min.
    :param replace_nodes_on_update: replace every node (all at once, waiting for their signals
        again) when a deploy changes the launch template, for example when the floating DLAMI
        parameter points at a new AMI. Default: False: a deploy never terminates running nodes;
        pin the AMI (``NeuronMachineImage.from_ami_id``) for identical nodes over time.
    :param preflight: check, before any node launches, that the type is offered in the AZ, the
        account's Trn vCPU quota holds the nodes, and the reservations or blocks exist, match and
        are active, and fail the deploy within minutes with the fix otherwise
        (``cdk_trn.preflight.Preflight``). Default: True.
    :param wait_for_capacity_block: with a capacity block that starts within 55 minutes, let the
        preflight wait for its start instead of failing. Default: False.
    :param hourly_price: what one node costs per hour in US dollars (a capacity block's or a
        negotiated rate), for the synth summary, the dashboard's spend rate and the stack's cost
        outputs. Default: the catalog's sourced on-demand estimate for the type and region
        (``cdk_trn.catalog.instance_price``), or unknown when it has none.
    :param alarm_email: subscribe this address to the cluster's events topic (node launches and
        terminations, and the ``ClusterDashboard`` alarms). Default: none.
    :param destroy_on_delete: the explicit opt-out from retention: delete the boot logs, the
        preflight's logs and their keys with the stack. Default: False (retained on stack delete).

    Its stack gets the outputs ``cdk-trn`` reads of a cluster (``ClusterName``, and
    ``NodeHourlyPrice`` when the price is known); one ``TrainiumCluster`` per stack.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        network: ITrainingNetwork,
        instance_type: str = "trn2.48xlarge",
        nodes: int = 2,
        capacity: Capacity | None = None,
        machine_image: NeuronMachineImage | None = None,
        file_system: ITrainingFileSystem | None = None,
        cluster_name: str | None = None,
        interface_mode: EfaInterfaceMode = EfaInterfaceMode.EFA_ONLY,
        root_volume_gib: int = 512,
        encryption_key: kms.IKey | None = None,
        signal_timeout: cdk.Duration | None = None,
        replace_nodes_on_update: bool = False,
        preflight: bool = True,
        wait_for_capacity_block: bool = False,
        hourly_price: float | None = None,
        alarm_email: str | None = None,
        destroy_on_delete: bool = False,
    ) -> None:
        super().__init__(scope, id)
        # Validate everything before the first resource exists.
        spec = instance_spec(instance_type)
        capacity = capacity or Capacity.on_demand()
        machine_image = machine_image or NeuronMachineImage.dlami()
        signal_timeout = signal_timeout or cdk.Duration.minutes(45)
        self._validate_nodes(nodes)
        capacity.validate_for(spec, nodes)
        self._validate_region(spec)
        self._validate_root_volume(root_volume_gib)
        self._validate_signal_timeout(signal_timeout)
        removal_policy = stateful_removal_policy(destroy_on_delete)
        self._signal_timeout_seconds = int(signal_timeout.to_seconds())
        validate_alarm_email(alarm_email)
        name = cluster_name or self._default_name()
        self._validate_cluster_name(name)
        self._hourly_price = (
            None
            if hourly_price is None
            else validate_hourly_price(f"{self.node.path}: hourly_price", hourly_price)
        )
        claim_stack(
            self,
            "TrainiumCluster",
            "cdk-trn finds a cluster by its stack's outputs (ClusterName, ...)",
        )

        self._spec: InstanceSpec = spec
        self._nodes = nodes
        self._capacity = capacity
        self._cluster_name = name
        self._network = network
        self._machine_image = machine_image
        self._file_system = file_system
        #: Set by ``SlurmScheduler`` when it serves this cluster (see ``slurm``).
        self._slurm: SlurmNodeSettings | None = None
        self._compile_cache_path = (
            f"{file_system.mount_path}/neuron-compile-cache"
            if file_system is not None
            else "/var/cache/neuron-compile-cache"
        )

        self._security_group = EfaSecurityGroup(self, "SecurityGroup", vpc=network.vpc)
        self._connections = ec2.Connections(security_groups=[self._security_group])
        self._role = self._node_role()
        self._signer_role = self._signing_agent_role()
        self._allow_vault_discovery()
        #: Encrypts the boot log groups of this cluster's instance roles (nodes, controller).
        self._boot_log_key = kms.Key(
            self,
            "BootLogKey",
            description=f"Encrypts the boot logs of the cdk-trn cluster {name}",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        allow_cloudwatch_logs(self._boot_log_key)
        self._boot = BootBundle(
            self,
            "Boot",
            role="node",
            encryption_key=self._boot_log_key,
            removal_policy=removal_policy,
        )
        self._boot.grant_boot(self.role)
        self._allow_boot_replacement(name)
        profile = iam.InstanceProfile(self, "InstanceProfile", role=self.role)

        # Under a customer-managed key that CloudWatch alarms and Auto Scaling may use: alarm
        # actions cannot publish to a topic under alias/aws/sns (cdk_trn.alarm_topic).
        self._events = ClusterEventsTopic(
            self, "NodeEvents", display_name=f"{name} node events", alarm_email=alarm_email
        )
        self._events_topic = self._events.topic

        self._placement_group: ec2.CfnPlacementGroup | None = None
        if capacity.placement_group:
            self._placement_group = ec2.CfnPlacementGroup(
                self, "PlacementGroup", strategy="cluster"
            )

        # L1: the L2 AutoScalingGroup cannot take a launch template with several network cards.
        self._auto_scaling_group = autoscaling.CfnAutoScalingGroup(
            self,
            "Nodes",
            min_size=str(nodes),
            max_size=str(nodes),
            desired_capacity=str(nodes),
            vpc_zone_identifier=[network.subnet.subnet_id],
            placement_group=self.placement_group.ref
            if self.placement_group
            else capacity.placement_group_name,
            health_check_type="EC2",
            # Nodes in service (and the rest of the group's size) for the dashboard.
            metrics_collection=[
                autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty(granularity="1Minute")
            ],
            notification_configurations=[
                autoscaling.CfnAutoScalingGroup.NotificationConfigurationProperty(
                    topic_arn=self.events_topic.topic_arn,
                    notification_types=[
                        "autoscaling:EC2_INSTANCE_LAUNCH",
                        "autoscaling:EC2_INSTANCE_LAUNCH_ERROR",
                        "autoscaling:EC2_INSTANCE_TERMINATE",
                        "autoscaling:EC2_INSTANCE_TERMINATE_ERROR",
                    ],
                )
            ],
        )
        self._launch_template = node_launch_template(
            self,
            "LaunchTemplate",
            spec=spec,
            image_id=machine_image.image_id(self),
            node_os=machine_image.os,
            instance_profile_arn=profile.instance_profile_arn,
            security_group_ids=[self._security_group.security_group_id],
            user_data=cdk.Lazy.string(_UserData(self)),
            capacity=capacity,
            tags={CLUSTER_TAG: name},
            interface_mode=interface_mode,
            root_volume_gib=root_volume_gib,
            encryption_key=encryption_key,
        )
        self.auto_scaling_group.launch_template = (
            autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=self.launch_template.ref,
                version=self.launch_template.attr_latest_version_number,
            )
        )
        self._wait_for_signals(signal_timeout, replace_nodes_on_update)
        self._preflight: Preflight | None = None
        if preflight:
            # Before the group: a deploy that cannot launch fails in minutes with the reason,
            # not after the creation policy's timeout with none.
            self._preflight = Preflight(
                self,
                "Preflight",
                network=network,
                instance_type=spec.instance_type,
                nodes=nodes,
                capacity=capacity,
                wait_for_capacity_block=wait_for_capacity_block,
                destroy_on_delete=destroy_on_delete,
                cluster_name=name,
                endpoint_services=[s.short_name for s in INTERFACE_ENDPOINTS.values()]
                if network.endpoints
                else (),
                reservation_group_arn=group.attr_arn
                if (group := reservation_group_of(self.launch_template)) is not None
                else None,
            )
            self.auto_scaling_group.node.add_dependency(self._preflight)
            if capacity.is_block:
                # A block ends: the group goes to zero first instead of retrying launches.
                self._preflight.scale_to_zero_before_block_ends(self, self.auto_scaling_group)
        # No node boots before its permissions exist: the role and every policy under it (its
        # grants, the SSM agent's). The L1 group does not depend on them by itself.
        self.auto_scaling_group.node.add_dependency(self.role)
        # Nodes signal through the CloudFormation endpoint and pull through the others.
        for endpoint in network.endpoints:
            self.auto_scaling_group.node.add_dependency(endpoint)
        if file_system is not None:
            file_system.allow_clients(self)
        cdk.Tags.of(self).add(CLUSTER_TAG, name)
        self._add_outputs()

    def _add_outputs(self) -> None:
        """The outputs ``cdk-trn`` reads of a cluster (contract keys): its name, which
        ``cdk-trn verify`` expects in signed checkpoints, and, when known, one node's hourly
        price, which ``cdk-trn cost`` prices jobs with unless given ``--hourly-price``."""
        outputs = [
            (
                OUTPUT_CLUSTER_NAME,
                self.cluster_name,
                "the cluster's name (tag cdk-trn:cluster, signed checkpoints' cluster)",
            )
        ]
        price = self.node_price
        if price is not None:
            region = cdk.Stack.of(self).region
            outputs.append(
                (
                    OUTPUT_NODE_HOURLY_PRICE,
                    f"{price.usd:g}",
                    f"US dollars per node-hour ({price.label(region)})"[:1000],
                )
            )
        #: The stack outputs of this cluster, by key.
        self.outputs = add_outputs(self, outputs)

    # --- validation -------------------------------------------------------------------------

    @staticmethod
    def _validate_nodes(nodes: int) -> None:
        if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise invalid("nodes", nodes, f"an integer from 1 to {MAX_NODES}")

    def _validate_region(self, spec: InstanceSpec) -> None:
        region = cdk.Stack.of(self).region
        if cdk.Token.is_unresolved(region):
            raise CdkTrnError(
                f"the stack's region must be set (env=Environment(region=...)) so that "
                f"{spec.instance_type} can be checked against the regions that offer it "
                f"({', '.join(spec.regions)}), got an environment-agnostic stack"
            )
        if not spec.offered_in(region):
            raise invalid(
                "instance_type",
                spec.instance_type,
                f"a type offered in the stack's region {region}; {spec.instance_type} is offered "
                f"in {', '.join(spec.regions)}",
            )

    @staticmethod
    def _validate_root_volume(gib: int) -> None:
        if not isinstance(gib, int) or not 64 <= gib <= 16384:
            raise invalid("root_volume_gib", gib, "an integer from 64 to 16384 GiB")

    @staticmethod
    def _validate_signal_timeout(timeout: cdk.Duration) -> None:
        minutes = timeout.to_minutes()
        if not 5 <= minutes <= 720:
            raise invalid("signal_timeout", f"{minutes} minutes", "between 5 and 720 minutes")

    @staticmethod
    def _validate_cluster_name(name: str) -> None:
        if not _CLUSTER_NAME.match(name):
            raise invalid(
                "cluster_name",
                name,
                "1-39 lower-case letters, digits or '-', starting with a letter",
            )

    def _default_name(self) -> str:
        path = "-".join(p for p in self.node.path.split("/") if p).lower()
        cleaned = re.sub(r"[^a-z0-9-]", "-", path).strip("-") or "trn"
        if not cleaned[0].isalpha():
            cleaned = "c-" + cleaned
        return cleaned[:39].rstrip("-")

    # --- scheduler ----------------------------------------------------------------------------

    def _attach_slurm(self, settings: SlurmNodeSettings) -> None:
        """Run slurmd on every node (called by ``SlurmScheduler``; one scheduler per cluster)."""
        if self._slurm is not None:
            raise CdkTrnError(
                f"{self.node.path} already has a scheduler: one SlurmScheduler per cluster"
            )
        self._slurm = settings
        self._allow_replacement()

    def _allow_replacement(self) -> None:
        """Let a node drained for a hardware reason mark itself Unhealthy in this group alone,
        so the group replaces it (``cdk_trn_runtime/slurm/scripts/node_checks.sh``), and let the
        nodes publish their metrics (``cdk_trn_runtime/monitoring/node_metrics.sh``, run in the
        Slurm container) into their namespace only.

        A customer-managed policy beside the role, not under it: it names the group, and the
        group waits for everything under the role (the instances' boot permissions), so a
        policy under it would be a dependency cycle. Nothing at boot needs these two actions:
        the health checks and the metrics timer start once slurmd runs."""
        group_arn = cdk.Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{self.auto_scaling_group.ref}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        policy = iam.ManagedPolicy(
            self,
            "SlurmNodePolicy",
            description=f"cdk-trn nodes of {self.cluster_name}: mark themselves unhealthy in "
            "their own Auto Scaling group, publish their metrics",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    actions=["autoscaling:SetInstanceHealth"], resources=[group_arn]
                ),
                put_metric_data_statement(METRICS_NAMESPACE_NODE),
            ],
        )
        acknowledge_wildcards(
            policy,
            "an Auto Scaling group's ARN contains a generated id that CloudFormation does not "
            "return; the group name (the Ref) is exact, so the statement covers this group only",
            resources=[group_arn],
        )
        acknowledge_wildcards(policy, PUT_METRIC_DATA_WILDCARD_REASON, resources=["*"])

    # --- resources ----------------------------------------------------------------------------

    def _node_role(self) -> ManagedPolicyRole:
        return signalling_instance_role(
            self, "NodeRole", description=f"Trainium training nodes of {self.node.path}"
        )

    def _signing_agent_role(self) -> iam.Role:
        """The credential an enclave vault accepts from this cluster (issue 20): a role with no
        permissions of its own, which only the node role may assume. Only root on a node can get
        the node role's credentials (instance metadata is root's: node/imds_guard.sh), and the
        node's signing agent (``cdk_trn_runtime.provenance.agent``, root) is what assumes it, so
        a job can neither call the vault nor sign as another run."""
        role = iam.Role(
            self,
            "SigningAgentRole",
            assumed_by=iam.ArnPrincipal(self._role.role_arn),
            description=f"Checkpoint signing agent of {self.node.path}: what the vault accepts",
            max_session_duration=cdk.Duration.hours(1),
        )
        role.grant_assume_role(self._role)
        return role

    def _allow_vault_discovery(self) -> None:
        """Let the nodes read the URL of an enclave vault that serves this cluster, and nothing
        else of SSM's parameters: ``ssm:GetParameter`` on the one parameter whose name the
        contract derives from the cluster's name (:attr:`vault_url_parameter`).

        Granted here by that name, not by the vault: an ``EnclaveKeyVault`` is deployed after the
        cluster (in the default app, a stack that depends on this one), so a grant referring to
        the vault's resources would make this stack depend on that one, a cycle. Both sides
        compute the same name instead and neither refers to the other. Without a vault the read
        answers ParameterNotFound, which the signing hook takes as "no vault"
        (``cdk_trn_runtime.provenance.signing``)."""
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadEnclaveVaultUrl",
                actions=["ssm:GetParameter"],
                resources=[self.vault_url_parameter_arn],
            )
        )

    def _allow_boot_replacement(self, name: str) -> None:
        """Let a booting node that failed a check a new instance may pass (its devices, its EFA
        count, the mount) mark itself Unhealthy, so that its group replaces it instead of a
        FAILURE signal rolling the whole cluster back, and let it read its group's creation time
        to keep that within the signal timeout (``fail_retryable``).

        Under the role, since the boot needs it (the group cannot be named: the group waits
        for the role). ``SetInstanceHealth`` is held to groups tagged with this cluster's name
        instead; DescribeAutoScalingGroups has no resource type."""
        group_arns = cdk.Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name="*:autoScalingGroupName/*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReplaceItselfAfterARetryableBootFailure",
                actions=["autoscaling:SetInstanceHealth"],
                resources=[group_arns],
                conditions={"StringEquals": {f"autoscaling:ResourceTag/{CLUSTER_TAG}": name}},
            )
        )
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadItsGroupsCreationTime",
                actions=["autoscaling:DescribeAutoScalingGroups"],
                resources=["*"],
            )
        )
        acknowledge_wildcards(
            self.role,
            "a booting node cannot name its Auto Scaling group (the group waits for this role); "
            "SetInstanceHealth is held to groups tagged with this cluster's name by "
            "autoscaling:ResourceTag, and DescribeAutoScalingGroups is read-only and supports no "
            "resource-level permission",
            resources=[group_arns, "*"],
        )

    def _user_data(self) -> str:
        """The node user data: the launcher of the node's boot bundle with these variables."""
        return self._boot.user_data(self._boot_variables())

    def _boot_variables(self) -> NodeBoot:
        """The node's ``CDK_TRN_*`` variables (the bundle's ``boot.env``)."""
        fs = self.file_system
        slurm = self.slurm
        return NodeBoot(
            region=cdk.Stack.of(self).region,
            signer_role=self._signer_role.role_arn,
            stack=cdk.Stack.of(self).stack_name,
            resource=cdk.Stack.of(self).get_logical_id(self.auto_scaling_group),
            cluster=self.cluster_name,
            node_os=self.machine_image.os.value,
            expected_neuron_devices=self.spec.neuron_devices,
            expected_efa_devices=self.spec.efa_devices,
            logical_nc=self.spec.default_logical_nc_config,
            ultraserver_size=(self.spec.ultraserver_size or 0)
            if self.capacity.is_ultraserver
            else 0,
            fsx_dns=fs.dns_name if fs else "",
            fsx_mount_name=fs.mount_name if fs else "",
            fsx_mount_path=fs.mount_path if fs else "",
            fsx_efa=bool(fs and fs.efa_enabled),
            compile_cache=self.compile_cache_path,
            rendezvous_ports="{}-{}".format(*RENDEZVOUS_PORTS),
            slurm_image=slurm.image_uri if slurm else "",
            slurm_key_secret=slurm.key_secret_arn if slurm else "",
            slurm_controller_parameter=slurm.controller_parameter if slurm else "",
            slurm_features=slurm.features if slurm else "",
            slurm_register_seconds=slurm.registration_seconds if slurm else 0,
            # fail_retryable: replace a node only while another boot fits in the signal timeout.
            boot_seconds=NODE_BOOT_MINUTES * 60,
            signal_seconds=self._signal_timeout_seconds,
        )

    def _wait_for_signals(self, timeout: cdk.Duration, replace_nodes_on_update: bool) -> None:
        # N SUCCESS signals, each with its instance's id: a node replaced after a retryable boot
        # failure sends none (fail_retryable marks it Unhealthy, no FAILURE), and its successor
        # signals for itself, so the count is still reached by N healthy nodes. One FAILURE
        # signal (a failure a replacement cannot fix) fails the group at once: 100 % must succeed.
        iso = timeout.to_iso_string()
        self.auto_scaling_group.cfn_options.creation_policy = cdk.CfnCreationPolicy(
            resource_signal=cdk.CfnResourceSignal(count=self.nodes, timeout=iso),
            auto_scaling_creation_policy=cdk.CfnResourceAutoScalingCreationPolicy(
                min_successful_instances_percent=100
            ),
        )
        if not replace_nodes_on_update:
            # Running nodes are never replaced by a deploy: a new launch template version (a new
            # DLAMI, a new boot script) applies to nodes launched later, for example by an
            # instance refresh the operator starts between training runs.
            return
        # Capacity blocks and reservations hold exactly N instances: replace them all at once
        # (never more than N running) and wait for their health signals again. CloudFormation
        # allows PauseTime up to one hour; nothing may scale or heal the group meanwhile.
        pause = cdk.Duration.minutes(min(timeout.to_minutes(), 60)).to_iso_string()
        self.auto_scaling_group.cfn_options.update_policy = cdk.CfnUpdatePolicy(
            auto_scaling_rolling_update=cdk.CfnAutoScalingRollingUpdate(
                max_batch_size=self.nodes,
                min_instances_in_service=0,
                wait_on_resource_signals=True,
                pause_time=pause,
                suspend_processes=[
                    "HealthCheck",
                    "ReplaceUnhealthy",
                    "AZRebalance",
                    "AlarmNotification",
                    "ScheduledActions",
                ],
            )
        )

    # --- attributes (read-only) -----------------------------------------------------------------

    @property
    def spec(self) -> InstanceSpec:
        """The catalog entry of the node type."""
        return self._spec

    @property
    def nodes(self) -> int:
        return self._nodes

    @property
    def capacity(self) -> Capacity:
        return self._capacity

    @property
    def cluster_name(self) -> str:
        """The name tagged on every resource (``cdk-trn:cluster``)."""
        return self._cluster_name

    @property
    def vault_url_parameter(self) -> str:
        """The SSM parameter a vault serving this cluster publishes its URL in; the nodes may
        read it (``contract.vault_url_parameter``)."""
        return vault_url_parameter(self.cluster_name)

    @property
    def vault_url_parameter_arn(self) -> str:
        return cdk.Stack.of(self).format_arn(
            service="ssm",
            resource="parameter",
            resource_name=self.vault_url_parameter.lstrip("/"),
        )

    @property
    def network(self) -> ITrainingNetwork:
        return self._network

    @property
    def vpc(self) -> ec2.IVpc:
        return self._network.vpc

    @property
    def subnet(self) -> ec2.ISubnet:
        """The node subnet."""
        return self._network.subnet

    @property
    def machine_image(self) -> NeuronMachineImage:
        return self._machine_image

    @property
    def file_system(self) -> ITrainingFileSystem | None:
        return self._file_system

    @property
    def slurm(self) -> SlurmNodeSettings | None:
        """What the nodes need to run slurmd, when a ``SlurmScheduler`` serves this cluster."""
        return self._slurm

    @property
    def preflight(self) -> Preflight | None:
        """The deploy-time preflight that runs before the nodes (None when turned off)."""
        return self._preflight

    @property
    def compile_cache_path(self) -> str:
        """The Neuron compile cache: on the shared file system when there is one."""
        return self._compile_cache_path

    @property
    def boot(self) -> BootBundle:
        """The node's boot bundle (S3 asset) and boot log group."""
        return self._boot

    @property
    def boot_log_key(self) -> kms.Key:
        """Encrypts the boot log groups of the cluster's instance roles."""
        return self._boot_log_key

    @property
    def security_group(self) -> EfaSecurityGroup:
        return self._security_group

    @property
    def connections(self) -> ec2.Connections:
        """The nodes' security group (all traffic within it for EFA)."""
        return self._connections

    @property
    def role(self) -> ManagedPolicyRole:
        """The node role; grant the nodes access through it (``grant_*(cluster.role)``): the
        statements land in its customer-managed policy, which exists before any node boots."""
        return self._role

    @property
    def signer_role(self) -> iam.IRole:
        """The role the nodes' signing agents assume to call an enclave vault; the vault admits
        this role only (``EnclaveKeyVault``), never the node role every process could once use."""
        return self._signer_role

    @property
    def events_topic(self) -> sns.Topic:
        """Node launches, terminations and their errors (subscribe your on-call to it)."""
        return self._events_topic

    @property
    def placement_group(self) -> ec2.CfnPlacementGroup | None:
        """The cluster placement group this construct created, if any."""
        return self._placement_group

    @property
    def auto_scaling_group(self) -> autoscaling.CfnAutoScalingGroup:
        return self._auto_scaling_group

    @property
    def launch_template(self) -> ec2.CfnLaunchTemplate:
        return self._launch_template

    # --- derived figures -------------------------------------------------------------------------

    @property
    def node_price(self) -> Price | None:
        """The price of one node per hour: the given ``hourly_price``, else the catalog's sourced
        on-demand estimate for the type in the stack's region; None when neither exists."""
        if self._hourly_price is not None:
            return Price(
                self._hourly_price,
                "hour",
                cdk.Stack.of(self).region,
                "given price (hourly_price)",
                "at synth",
                estimate=False,
            )
        return instance_price(self.spec.instance_type, cdk.Stack.of(self).region)

    @property
    def hourly_price(self) -> float | None:
        """US dollars per node-hour (``node_price``), None when unknown."""
        price = self.node_price
        return None if price is None else price.usd

    @property
    def chips(self) -> int:
        return self.spec.cluster_chips(self.nodes)

    @property
    def peak_bf16_pflops(self) -> float:
        return self.spec.cluster_peak_bf16_pflops(self.nodes)

    @property
    def efa_tbps(self) -> float:
        return self.spec.cluster_efa_tbps(self.nodes)

    @property
    def hbm_gib(self) -> int:
        return self.spec.cluster_hbm_gib(self.nodes)

    def summary(self) -> dict[str, Any]:
        """The figures ``make synth`` prints and the stack outputs carry."""
        return {
            "instance_type": self.spec.instance_type,
            "nodes": self.nodes,
            "capacity": self.capacity.kind.value,
            "chips": self.chips,
            "peak_bf16_pflops": round(self.peak_bf16_pflops, 2),
            "efa_tbps": round(self.efa_tbps, 1),
            "hbm_gib": self.hbm_gib,
            "availability_zone": self.network.availability_zone,
        }
