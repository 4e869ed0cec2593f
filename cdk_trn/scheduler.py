"""SlurmScheduler: Slurm on a TrainiumCluster, from the bundled training image.

The controller is one small instance in an Auto Scaling group of exactly one (min = max = 1, so the
group replaces it when it dies) in the cluster's isolated subnet, running ``slurmctld`` from the
training image with host networking; its StateSaveLocation is on the shared file system
(``<mount>/slurm/state``), so a replacement resumes the queue. Every node runs ``slurmd`` from the
same image as a dynamic node (``slurmd -Z``, configless) whose features are the instance type,
``efa`` and, on trn2u, its UltraServer id (``us-<id>``); a node signals success only after its
slurmd registered.

Finding the controller: its address changes on replacement, and Route 53's API has no VPC
endpoint, so the controller writes its address into an SSM parameter at boot (through the SSM
endpoint); a timer on every instance points the name ``cdk-trn-slurmctld`` (SlurmctldAddr,
``slurmd --conf-server``) at that address in ``/etc/hosts``. The munge key is generated at deploy
time into Secrets Manager under a customer-managed key and read by the instances through the
Secrets Manager endpoint; it never appears in a template, user data or log.

slurm.conf is rendered on the controller at boot by the shared generator::

    python3 -m cdk_trn_runtime.slurm.config --spec /etc/slurm/cluster.json \\
        --output /etc/slurm/slurm.conf

from the cluster document this construct writes into the controller's user data
(``CDK_TRN_SLURM_SPEC``, see :func:`slurm_cluster_document` for its keys), plus two keys the
controller adds at boot: ``controller_host`` (its ``hostname -s``, for SlurmctldHost) and
``controller_addr`` (``cdk-trn-slurmctld``, for SlurmctldAddr). Every deploy also writes the
document into an SSM parameter (``/cdk-trn/<cluster>/slurm-cluster-document``) that the controller
re-reads every minute and applies (``cdk_trn_runtime.slurm.apply``): slurmctld is restarted when
a key it reads only at start changed (MaxNodeCount, which grows with the node count) and
reconfigured otherwise, so ``-c nodes=8`` reaches a running controller. A reaper on the controller
deletes the records of dead dynamic nodes whose instance is gone (``ec2:DescribeInstances``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._boot import BootBundle
from cdk_trn._metrics_policy import PUT_METRIC_DATA_WILDCARD_REASON, put_metric_data_statement
from cdk_trn._outputs import add_outputs, claim_stack
from cdk_trn._resources import ManagedPolicyRole, stateful_removal_policy
from cdk_trn.acceptance.image import NeuronTrainingImage
from cdk_trn.capacity import CapacityKind
from cdk_trn.catalog import HOST_SPECS
from cdk_trn.cluster import SlurmNodeSettings, TrainiumCluster
from cdk_trn.compliance.acknowledge import (
    acknowledge,
    acknowledge_regulated,
    acknowledge_wildcards,
)
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn.researcher_access import ResearcherAccess
from cdk_trn.security import signalling_instance_role
from cdk_trn_runtime.contract import (
    CLUSTER_TAG,
    METRICS_NAMESPACE_SLURM,
    OUTPUT_CONTROLLER_GROUP,
    OUTPUT_DOC_JOB_COMPLETIONS,
    OUTPUT_JOB_USER,
    OUTPUT_NODE_GROUP,
    OUTPUT_SHARED_ROOT,
    OUTPUT_SLURM_CLUSTER,
    SLURM_DEFAULT_CLUSTER_NAME,
    SLURM_JOB_USER,
    SLURMCTLD_PORT,
    SLURMD_PORT,
)
from cdk_trn_runtime.contract.boot import ControllerBoot
from cdk_trn_runtime.contract.cluster_document import ClusterDocument, PowerSave

#: The controller runs slurmctld, munged and Docker and pulls the Neuron image: below this it
#: swaps or is killed by the OOM killer while pulling.
MIN_CONTROLLER_MEMORY_GIB = 8
#: Ports srun listens on (SrunPortRange) for its tasks' and slurmctld's connections, on the
#: controller and on every node (a batch script's srun runs on the job's first node).
SRUN_PORT_RANGE = (60001, 63000)
#: slurmstepd's ports on the nodes: the Linux ephemeral range (ip_local_port_range default).
STEP_PORT_RANGE = (32768, 60999)
#: The SSM parameter holding the cluster document the controller re-reads and applies.
CLUSTER_DOCUMENT_PARAMETER_FORMAT = "/cdk-trn/{cluster}/slurm-cluster-document"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class SlurmScheduler(Construct):
    """Slurm for a ``TrainiumCluster``: the controller, the munge key and slurmd on every node.

    Create it before the app synthesizes; the cluster's node user data then starts slurmd.

    :param cluster: the cluster to schedule; it must have a shared file system.
    :param image: the image slurmctld, slurmd and every job run in. Default:
        ``NeuronTrainingImage.bundled()`` (Slurm 23.11 from Ubuntu 24.04).
    :param controller_instance_type: a host type of the catalog (``cdk_trn.catalog.HOST_SPECS``:
        c6i, c7i, m6i, m7i, r6i and r7i from large to 8xlarge) with at least
        ``MIN_CONTROLLER_MEMORY_GIB`` GiB. Default: ``m7i.xlarge`` (4 vCPUs, 16 GiB).
    :param controller_machine_image: the controller's AMI. Default: the latest Amazon Linux 2023,
        resolved from its public SSM parameter at deploy time.
    :param slurm_cluster_name: ClusterName in slurm.conf. Default: ``trn``.
    :param partition: the partition of the cluster's nodes (whole-node ``--exclusive``
        scheduling). Default: ``trn``.
    :param max_nodes_per_job: MaxNodes of the partition. On UltraServer types a multiple of the
        UltraServer size, so a job never splits one. Default: the cluster's node count.
    :param controller_root_volume_gib: the controller's root volume (encrypted gp3), which holds
        the training image. Default: 100 GiB.
    :param registration_timeout: how long a booting node waits for its slurmd to register.
        Default: 15 minutes.
    :param controller_signal_timeout: how long the deploy waits for slurmctld. Default: 30 min.
    :param idle_scale_in: opt-in idle scale-in of an on-demand cluster, through Slurm's power
        saving (``cdk_trn_runtime.slurm.power``): a node idle this long (SuspendTime) goes to
        Standby in its group (desired capacity down) and stops; a job that needs it starts it
        and returns it to service (desired capacity up). 5 minutes to 24 hours. Refused on
        reservations and capacity blocks, which are paid for whether used or not. Default: none.
    :param destroy_on_delete: the explicit opt-out from retention: delete the controller's boot
        log group with the stack. Default: False (retained). (The munge key and its KMS key are
        always deleted: a new deploy generates a new one.)

    Must be in its cluster's stack, which gets the outputs ``cdk-trn`` finds the controller by
    (``SlurmControllerGroup``, ``SlurmNodeGroup``, ``SlurmJobUser``, ``SlurmSharedRoot``,
    ``SlurmClusterName``, ``SlurmJobCompletionsDocument``); one ``SlurmScheduler`` per stack.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: TrainiumCluster,
        image: NeuronTrainingImage | None = None,
        controller_instance_type: str = "m7i.xlarge",
        controller_machine_image: ec2.IMachineImage | None = None,
        slurm_cluster_name: str = SLURM_DEFAULT_CLUSTER_NAME,
        partition: str = "trn",
        max_nodes_per_job: int | None = None,
        controller_root_volume_gib: int = 100,
        registration_timeout: cdk.Duration | None = None,
        controller_signal_timeout: cdk.Duration | None = None,
        idle_scale_in: cdk.Duration | None = None,
        destroy_on_delete: bool = False,
    ) -> None:
        super().__init__(scope, id)
        registration_timeout = registration_timeout or cdk.Duration.minutes(15)
        controller_signal_timeout = controller_signal_timeout or cdk.Duration.minutes(30)
        max_nodes_per_job = cluster.nodes if max_nodes_per_job is None else max_nodes_per_job
        self._validate_file_system(cluster)
        self._validate_controller_type(controller_instance_type)
        self._validate_name("slurm_cluster_name", slurm_cluster_name)
        self._validate_name("partition", partition)
        self._validate_layout(cluster, max_nodes_per_job)
        self._validate_root_volume(controller_root_volume_gib)
        self._validate_minutes("registration_timeout", registration_timeout, 2, 60)
        self._validate_minutes("controller_signal_timeout", controller_signal_timeout, 5, 120)
        self._validate_idle_scale_in(cluster, idle_scale_in)
        removal_policy = stateful_removal_policy(destroy_on_delete)
        self._validate_stack(cluster)
        #: Seconds a node may be idle before it is suspended (None: never).
        self.idle_scale_in_seconds = (
            int(idle_scale_in.to_seconds()) if idle_scale_in is not None else None
        )
        assert cluster.file_system is not None

        self.cluster = cluster
        #: The controller's host type (the cost summary prices it).
        self.controller_instance_type = controller_instance_type
        self.slurm_cluster_name = slurm_cluster_name
        self.partition = partition
        self.max_nodes_per_job = max_nodes_per_job
        self.shared_root = cluster.file_system.mount_path
        self.job_user = SLURM_JOB_USER
        self.image = (image or NeuronTrainingImage.bundled()).bind(self)

        #: Encrypts the munge key; only the controller and node roles may decrypt (via grants).
        self.key = kms.Key(
            self,
            "AuthKeyEncryption",
            description=f"Encrypts the Slurm authentication key of {cluster.cluster_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        #: The munge key: generated by Secrets Manager at deploy time, never in the template.
        self.auth_key = secretsmanager.Secret(
            self,
            "AuthKey",
            description=f"munge key of the Slurm cluster {cluster.cluster_name}",
            encryption_key=self.key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=128, exclude_punctuation=True, include_space=False
            ),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.auth_key,
            "AwsSolutions-SMG4",
            "a munge key cannot rotate under running daemons: every slurmctld, slurmd and job "
            "step must change it at once; replace the secret and roll the instances instead",
        )
        acknowledge_regulated(
            self.auth_key,
            "SecretsManagerRotationEnabled",
            "a munge key cannot rotate under running daemons: every slurmctld, slurmd and job "
            "step must change it at once; replace the secret and roll the instances instead",
        )
        #: The controller's current private address, written by the controller at each boot.
        self.controller_address = ssm.StringParameter(
            self,
            "ControllerAddress",
            description=f"Address of the Slurm controller of {cluster.cluster_name} "
            "(written by the controller at boot)",
            string_value="none",
        )

        #: The cluster document, rewritten by every deploy that changes it: the controller
        #: re-reads it (a timer) and restarts slurmctld or reconfigures (``slurm.apply``).
        self.cluster_document_parameter_name = CLUSTER_DOCUMENT_PARAMETER_FORMAT.format(
            cluster=cluster.cluster_name
        )
        self.cluster_document = ssm.StringParameter(
            self,
            "ClusterDocument",
            parameter_name=self.cluster_document_parameter_name,
            description=f"Slurm cluster document of {cluster.cluster_name} (the controller "
            "re-reads it and applies changes)",
            string_value=cdk.Lazy.string(_ClusterDocumentValue(self)),
        )

        self.security_group = ec2.SecurityGroup(
            self,
            "ControllerSecurityGroup",
            vpc=cluster.vpc,
            description="Slurm controller: slurmctld from the nodes, HTTPS to AWS",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(443),
            "HTTPS to AWS endpoints (VPC interface endpoints and the S3 gateway)",
        )
        self.connections = ec2.Connections(security_groups=[self.security_group])
        self._allow_slurm_traffic()
        cluster.file_system.allow_clients(self)

        self.role = self._controller_role()
        #: The controller's boot bundle (S3 asset) and boot log group.
        self.boot = BootBundle(
            self,
            "Boot",
            role="controller",
            encryption_key=cluster.boot_log_key,
            removal_policy=removal_policy,
        )
        self.boot.grant_boot(self.role)
        self.auto_scaling_group = self._controller_group(
            controller_instance_type,
            controller_machine_image or ec2.MachineImage.latest_amazon_linux2023(),
            controller_root_volume_gib,
            controller_signal_timeout,
        )
        for role in (self.role, cluster.role):
            self.auth_key.grant_read(role)
            self.image.grant_pull(role)
        self.controller_address.grant_write(self.role)
        iam.Grant.add_to_principal(
            grantee=self.role,
            actions=["ssm:GetParameter"],
            resource_arns=[self.cluster_document.parameter_arn],
        )
        self._allow_reaper()
        # The nodes only read the address (boot_common.sh resolve_controller: ssm get-parameter),
        # so not grant_read's GetParameters, GetParameterHistory and DescribeParameters.
        iam.Grant.add_to_principal(
            grantee=cluster.role,
            actions=["ssm:GetParameter"],
            resource_arns=[self.controller_address.parameter_arn],
        )
        self._acknowledge_pull_wildcard(self.role)
        self._allow_metrics()
        self._acknowledge_pull_wildcard(cluster.role)

        cluster._attach_slurm(
            SlurmNodeSettings(
                image_uri=self.image.image_uri,
                key_secret_arn=self.auth_key.secret_arn,
                controller_parameter=self.controller_address.parameter_name,
                features=",".join(self._static_features()),
                registration_seconds=int(registration_timeout.to_seconds()),
            )
        )
        if self.idle_scale_in_seconds is not None:
            self._allow_power_saving()
        # Nodes register with a running controller: they boot after it signalled.
        cluster.auto_scaling_group.node.add_dependency(self.auto_scaling_group)
        #: The SSM documents cdk-trn uses (researchers' least privilege, issue 20).
        self.researcher_access = ResearcherAccess(
            self,
            "ResearcherAccess",
            cluster_name=cluster.cluster_name,
            job_user=self.job_user,
            shared_root=self.shared_root,
        )
        cdk.Tags.of(self).add(CLUSTER_TAG, cluster.cluster_name)
        #: The stack outputs ``cdk-trn`` finds the controller and the job user by (contract keys).
        self.outputs = add_outputs(
            self,
            [
                (
                    OUTPUT_CONTROLLER_GROUP,
                    self.auto_scaling_group.auto_scaling_group_name,
                    "Auto Scaling group of the Slurm controller",
                ),
                (
                    OUTPUT_NODE_GROUP,
                    cluster.auto_scaling_group.ref,
                    "Auto Scaling group of the Slurm nodes",
                ),
                (OUTPUT_JOB_USER, self.job_user, "user Slurm jobs run as"),
                (OUTPUT_SHARED_ROOT, self.shared_root, "mount path of the shared file system"),
                (OUTPUT_SLURM_CLUSTER, self.slurm_cluster_name, "Slurm cluster name"),
                (
                    OUTPUT_DOC_JOB_COMPLETIONS,
                    self.researcher_access.documents["completions"].ref,
                    "read-only SSM document of the job completion log (cdk-trn cost)",
                ),
            ],
        )

    # --- validation -------------------------------------------------------------------------

    def _validate_stack(self, cluster: TrainiumCluster) -> None:
        """One scheduler per stack, in its cluster's stack: ``cdk-trn`` reads the cluster's and
        the scheduler's outputs from one stack."""
        stack, cluster_stack = cdk.Stack.of(self), cdk.Stack.of(cluster)
        if stack.node.path != cluster_stack.node.path:
            raise CdkTrnError(
                f"{self.node.path}: a SlurmScheduler must be in its cluster's stack "
                f"({cluster_stack.node.path}, of {cluster.node.path}), got stack "
                f"{stack.node.path}: cdk-trn reads the cluster's and the scheduler's outputs "
                "from one stack"
            )
        claim_stack(
            self,
            "SlurmScheduler",
            "cdk-trn finds the Slurm controller by its stack's outputs (SlurmControllerGroup, ...)",
        )

    def _validate_file_system(self, cluster: TrainiumCluster) -> None:
        if cluster.file_system is None:
            raise CdkTrnError(
                f"{self.node.path}: cluster must have a file_system: Slurm keeps its state, the "
                f"job user's home and the job logs on it, got {cluster.node.path} without one"
            )

    def _validate_controller_type(self, instance_type: str) -> None:
        prop = f"{self.node.path}: controller_instance_type"
        spec = HOST_SPECS.get(instance_type) if isinstance(instance_type, str) else None
        if spec is None:
            raise invalid(
                prop,
                instance_type,
                "a host type of the catalog (cdk_trn.catalog.HOST_SPECS), one of "
                + ", ".join(HOST_SPECS),
            )
        if spec.memory_gib < MIN_CONTROLLER_MEMORY_GIB:
            raise invalid(
                prop,
                instance_type,
                f"a type with at least {MIN_CONTROLLER_MEMORY_GIB} GiB of memory "
                f"({instance_type} has {spec.memory_gib} GiB), such as m7i.xlarge",
            )

    def _validate_name(self, prop: str, value: str) -> None:
        if not isinstance(value, str) or not _NAME.match(value):
            raise invalid(
                f"{self.node.path}: {prop}",
                value,
                "1-40 lower-case letters, digits or '_', starting with a letter",
            )

    def _validate_layout(self, cluster: TrainiumCluster, max_nodes: int) -> None:
        prop = f"{self.node.path}: max_nodes_per_job"
        if isinstance(max_nodes, bool) or not isinstance(max_nodes, int):
            raise invalid(prop, max_nodes, "an integer")
        if not 1 <= max_nodes <= cluster.nodes:
            raise invalid(
                prop, max_nodes, f"from 1 to the cluster's {cluster.nodes} nodes (partition size)"
            )
        size = cluster.spec.ultraserver_size
        if cluster.capacity.is_ultraserver and size and max_nodes % size:
            raise invalid(
                prop,
                max_nodes,
                f"a multiple of {size} on {cluster.spec.instance_type}, so that a job never "
                f"splits an UltraServer of {size} nodes",
            )

    def _validate_root_volume(self, gib: int) -> None:
        if isinstance(gib, bool) or not isinstance(gib, int) or not 64 <= gib <= 16384:
            raise invalid(
                f"{self.node.path}: controller_root_volume_gib",
                gib,
                "an integer from 64 to 16384 GiB (the training image needs about 60 GiB)",
            )

    def _validate_minutes(self, prop: str, value: cdk.Duration, low: int, high: int) -> None:
        minutes = value.to_minutes()
        if not low <= minutes <= high:
            raise invalid(
                f"{self.node.path}: {prop}", f"{minutes} minutes", f"{low} to {high} minutes"
            )

    def _validate_idle_scale_in(
        self, cluster: TrainiumCluster, idle_scale_in: cdk.Duration | None
    ) -> None:
        if idle_scale_in is None:
            return
        prop = f"{self.node.path}: idle_scale_in"
        if cluster.capacity.kind is not CapacityKind.ON_DEMAND:
            raise invalid(
                prop,
                f"{idle_scale_in.to_minutes()} minutes",
                f"unset on {cluster.capacity.kind.value} capacity: reservations and capacity "
                "blocks are paid for whether the nodes run or not; only on-demand clusters "
                "scale in",
            )
        self._validate_minutes("idle_scale_in", idle_scale_in, 5, 24 * 60)

    # --- resources ----------------------------------------------------------------------------

    def _allow_power_saving(self) -> None:
        """The controller's SuspendProgram and ResumeProgram move the nodes between service and
        Standby in their own group and stop or start them (``cdk_trn_runtime.slurm.power``);
        the group may then hold fewer than its nodes (MinSize 0)."""
        group = self.cluster.auto_scaling_group
        group.min_size = "0"
        # A deploy never puts the desired capacity back while nodes are stopped in Standby (it
        # would launch replacements beside them).
        current = group.cfn_options.update_policy
        group.cfn_options.update_policy = cdk.CfnUpdatePolicy(
            auto_scaling_rolling_update=current.auto_scaling_rolling_update if current else None,
            auto_scaling_scheduled_action=cdk.CfnAutoScalingScheduledAction(
                ignore_unmodified_group_size_properties=True
            ),
        )
        stack = cdk.Stack.of(self)
        group_arn = stack.format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{group.ref}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        instances = stack.format_arn(service="ec2", resource="instance", resource_name="*")
        policy = iam.ManagedPolicy(
            self,
            "PowerSavingPolicy",
            description=f"Slurm controller of {self.cluster.cluster_name}: suspend and resume "
            "idle nodes (Standby and stop, start and back in service)",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    actions=["autoscaling:EnterStandby", "autoscaling:ExitStandby"],
                    resources=[group_arn],
                ),
                iam.PolicyStatement(
                    actions=["ec2:StartInstances", "ec2:StopInstances"],
                    resources=[instances],
                    conditions={
                        "StringEquals": {
                            f"aws:ResourceTag/{CLUSTER_TAG}": self.cluster.cluster_name
                        }
                    },
                ),
                iam.PolicyStatement(actions=["ec2:DescribeInstances"], resources=["*"]),
            ],
        )
        acknowledge_wildcards(
            policy,
            "an Auto Scaling group's ARN has a generated id CloudFormation does not return (the "
            "group name is exact); instances are started and stopped only when tagged with this "
            "cluster's name; ec2:DescribeInstances supports no resource-level permission",
            resources=[group_arn, instances, "*"],
        )

    def _static_features(self) -> list[str]:
        spec = self.cluster.spec
        return [spec.instance_type, *(["efa"] if spec.efa_devices else [])]

    def _allow_slurm_traffic(self) -> None:
        nodes = self.cluster.connections
        self.connections.allow_from(nodes, ec2.Port.tcp(SLURMCTLD_PORT), "slurmd to slurmctld")
        self.connections.allow_from(
            nodes,
            ec2.Port.tcp_range(*SRUN_PORT_RANGE),
            "job steps to srun on the controller (SrunPortRange)",
        )
        self.connections.allow_to(nodes, ec2.Port.tcp(SLURMD_PORT), "slurmctld to slurmd")
        # SrunPortRange applies to every srun, those a batch script starts on a node too:
        # slurmctld reaches them there (step completion, signals, time limits). Node-to-node
        # traffic (slurmstepd to an srun on another node) is open within the nodes' group.
        self.connections.allow_to(
            nodes,
            ec2.Port.tcp_range(*SRUN_PORT_RANGE),
            "slurmctld to srun on the nodes (SrunPortRange)",
        )
        self.connections.allow_to(
            nodes,
            ec2.Port.tcp_range(*STEP_PORT_RANGE),
            "srun on the controller to slurmstepd (ephemeral ports)",
        )

    def _controller_role(self) -> ManagedPolicyRole:
        return signalling_instance_role(
            self, "ControllerRole", description=f"Slurm controller of {self.cluster.node.path}"
        )

    def _allow_metrics(self) -> None:
        """The controller publishes Slurm's node states and queue depth (controller_bootstrap.sh
        publish-metrics) into the Slurm namespace only; a policy of its own under the role (so
        the controller's launch template waits for it), so that its '*' is acknowledged for
        this reason alone."""
        policy = iam.ManagedPolicy(
            self.role,
            "MetricsPolicy",
            description=f"Slurm controller of {self.cluster.cluster_name}: publish Slurm metrics",
            roles=[self.role],
            statements=[put_metric_data_statement(METRICS_NAMESPACE_SLURM)],
        )
        acknowledge_wildcards(policy, PUT_METRIC_DATA_WILDCARD_REASON, resources=["*"])

    def _allow_reaper(self) -> None:
        """The controller's reaper (``slurm/scripts/reaper.sh``) asks EC2 whether a dead dynamic
        node's instance still exists before it deletes the node's record; a policy of its own so
        that its '*' is acknowledged for this reason alone."""
        policy = iam.ManagedPolicy(
            self.role,
            "ReaperPolicy",
            description=f"Slurm controller of {self.cluster.cluster_name}: find dead and "
            "refreshed nodes' instances and their launch template versions",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    actions=[
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "ec2:DescribeInstances",
                    ],
                    resources=["*"],
                ),
            ],
        )
        acknowledge_wildcards(
            policy,
            "ec2:DescribeInstances, autoscaling:DescribeAutoScalingGroups and "
            "autoscaling:DescribeAutoScalingInstances support no resource-level permission: their "
            "Resource must be '*' (read-only; the reaper filters by the cluster's tag and asks "
            "only about instances of this cluster)",
            resources=["*"],
        )

    def _acknowledge_pull_wildcard(self, role: ManagedPolicyRole) -> None:
        # On the role's own policy, not the role: the SSM agent's and the metrics policies under
        # the role have their own '*' with their own reasons.
        assert role.managed_policy is not None, "the pull grant fills the role's policy"
        acknowledge_wildcards(
            role.managed_policy,
            "ecr:GetAuthorizationToken (the registry login before pulling the Slurm image) "
            "supports no resource-level permission: its Resource must be '*'",
            resources=["*"],
        )

    def _controller_group(
        self,
        instance_type: str,
        machine_image: ec2.IMachineImage,
        root_volume_gib: int,
        signal_timeout: cdk.Duration,
    ) -> autoscaling.AutoScalingGroup:
        template = ec2.LaunchTemplate(
            self,
            "ControllerLaunchTemplate",
            instance_type=ec2.InstanceType(instance_type),
            machine_image=machine_image,
            role=self.role,
            security_group=self.security_group,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            detailed_monitoring=True,
            user_data=ec2.UserData.custom(cdk.Lazy.string(_ControllerUserData(self))),
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        self.launch_template = template
        group = autoscaling.AutoScalingGroup(
            self,
            "Controller",
            vpc=self.cluster.vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[self.cluster.subnet]),
            launch_template=template,
            min_capacity=1,
            max_capacity=1,
            signals=autoscaling.Signals.wait_for_count(1, timeout=signal_timeout),
            notifications=[autoscaling.NotificationConfiguration(topic=self.cluster.events_topic)],
        )
        for endpoint in self.cluster.network.endpoints:
            group.node.add_dependency(endpoint)
        return group

    def slurm_cluster_document(self) -> dict[str, Any]:
        """The cluster document (its JSON form) the controller hands to the slurm.conf generator:
        the contract's message (``cdk_trn_runtime.contract.cluster_document.ClusterDocument``,
        whose fields are its keys), built as the local twin builds it. ``node_real_memory_mib``
        keeps 5% of the catalog's memory for the OS and daemons; ``max_node_count`` has headroom
        for replacements; ``document_parameter`` names the SSM parameter the controller re-reads
        it from. At boot the controller adds ``controller_host`` and ``controller_addr``.
        """
        return self._cluster_document().to_properties()

    def _cluster_document(self) -> ClusterDocument:
        spec = self.cluster.spec
        document = ClusterDocument.build(
            nodes=self.cluster.nodes,
            shared_root=self.shared_root,
            node_cpus=spec.vcpus,
            node_real_memory_mib=int(spec.memory_gib * 1024 * 0.95),
            node_features=self._static_features(),
            cluster_name=self.slurm_cluster_name,
            partition=self.partition,
            ultraserver_size=spec.ultraserver_size
            if self.cluster.capacity.is_ultraserver and spec.ultraserver_size
            else 0,
            max_nodes_per_job=self.max_nodes_per_job,
            slurmctld_port=SLURMCTLD_PORT,
            slurmd_port=SLURMD_PORT,
            srun_port_range=SRUN_PORT_RANGE,
        )
        power_save = None
        if self.idle_scale_in_seconds is not None:
            # The group's name is not here (the controller boots before the group exists): the
            # power-saving programs read it from the instances' own tag.
            power_save = PowerSave(
                idle_seconds=self.idle_scale_in_seconds,
                cluster_tag=(CLUSTER_TAG, self.cluster.cluster_name),
                region=cdk.Stack.of(self).region,
            )
        return dataclasses.replace(
            document,
            document_parameter=self.cluster_document_parameter_name,
            power_save=power_save,
        )

    def _user_data(self) -> str:
        """The controller's user data: the launcher of its boot bundle with these variables."""
        return self.boot.user_data(self._boot_variables())

    def _boot_variables(self) -> ControllerBoot:
        """The controller's ``CDK_TRN_*`` variables (the bundle's ``boot.env``)."""
        stack = cdk.Stack.of(self)
        fs = self.cluster.file_system
        assert fs is not None
        group = self.auto_scaling_group.node.default_child
        assert isinstance(group, cdk.CfnResource)
        return ControllerBoot(
            region=stack.region,
            stack=stack.stack_name,
            resource=stack.get_logical_id(group),
            cluster=self.cluster.cluster_name,
            node_os="amazon-linux-2023",
            fsx_dns=fs.dns_name,
            fsx_mount_name=fs.mount_name,
            fsx_mount_path=fs.mount_path,
            # A controller is a TCP Lustre client: EFA-enabled file systems serve those too.
            fsx_efa=False,
            slurm_image=self.image.image_uri,
            slurm_key_secret=self.auth_key.secret_arn,
            slurm_controller_parameter=self.controller_address.parameter_name,
            slurm_spec=self._cluster_document(),
        )


@jsii.implements(cdk.IStableStringProducer)
class _ControllerUserData:
    """The controller's user data, rendered at synth (its logical id is known by then)."""

    def __init__(self, scheduler: SlurmScheduler) -> None:
        self._scheduler = scheduler

    def produce(self) -> str:
        return self._scheduler._user_data()


@jsii.implements(cdk.IStableStringProducer)
class _ClusterDocumentValue:
    """The cluster document's JSON, rendered at synth (after the cluster's nodes are known)."""

    def __init__(self, scheduler: SlurmScheduler) -> None:
        self._scheduler = scheduler

    def produce(self) -> str:
        return json.dumps(self._scheduler.slurm_cluster_document(), sort_keys=True)
