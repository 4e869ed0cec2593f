"""The stateless stack: the Trainium cluster and its acceptance run."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from cdk_trn.acceptance import AcceptanceRun, NeuronTrainingImage
from cdk_trn.acceptance.image import bundled_versions
from cdk_trn.capacity import Capacity
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.errors import invalid
from cdk_trn.machine_image import NeuronMachineImage
from cdk_trn.observability import ClusterDashboard
from cdk_trn.scheduler import SlurmScheduler
from stacks.config import AppConfig
from stacks.storage_stack import StorageStack


class ClusterStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: AppConfig,
        storage: StorageStack,
        **kwargs: object,
    ) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.cluster = TrainiumCluster(
            self,
            "Cluster",
            network=storage.network,
            instance_type=config.instance_type,
            nodes=config.nodes,
            capacity=Capacity.from_name(
                config.capacity, config.reservation_id, config.reservation_ids
            ),
            machine_image=NeuronMachineImage.from_ami_id(
                config.ami_id, NeuronMachineImage.from_name(config.node_os).os
            )
            if config.ami_id
            else NeuronMachineImage.from_name(config.node_os),
            cluster_name=f"{config.prefix}-cluster",
            file_system=storage.file_system,
            hourly_price=config.hourly_price,
            alarm_email=config.alarm_email,
        )
        storage.buckets.grant_read_write(self.cluster.role)
        # One image for the acceptance run, slurmd, slurmctld and users' jobs: the bundled one, or
        # -c trainingImage=<Dockerfile directory or ECR image URI>.
        image = (
            NeuronTrainingImage.from_reference(config.training_image)
            if config.training_image
            else NeuronTrainingImage.bundled()
        )
        self._image_outputs(image)
        self.scheduler: SlurmScheduler | None = None
        if config.idle_scale_in_minutes is not None and config.scheduler != "slurm":
            raise invalid(
                "idleScaleInMinutes",
                config.idle_scale_in_minutes,
                "set only with scheduler=slurm (Slurm's power saving stops idle nodes)",
            )
        if config.scheduler == "slurm":
            self.scheduler = SlurmScheduler(
                self,
                "Slurm",
                cluster=self.cluster,
                image=image,
                idle_scale_in=cdk.Duration.minutes(config.idle_scale_in_minutes)
                if config.idle_scale_in_minutes is not None
                else None,
            )
            # cdk-trn submit --code: archives under code/ in the dataset bucket.
            self.scheduler.researcher_access.allow_code_archives(
                storage.buckets.dataset_bucket, self.scheduler.role
            )
        # During the deploy, the bundled container proves the nodes: the deploy fails if they
        # are broken or slow, and the figures become stack outputs.
        self.acceptance: AcceptanceRun | None = None
        if config.acceptance:
            # With Slurm the run is a Slurm job in the scheduler's image (the same one).
            self.acceptance = AcceptanceRun(
                self,
                "Acceptance",
                cluster=self.cluster,
                scheduler=self.scheduler,
                image=None if self.scheduler else image,
                access_log_bucket=storage.buckets.access_log_bucket,
            )
        # The cluster at a glance, and alarms (drained node, failed acceptance run) to its topic.
        self.dashboard: ClusterDashboard | None = None
        if config.idle_alarm_hours is not None and not (config.dashboard and self.scheduler):
            raise invalid(
                "idleAlarmHours",
                config.idle_alarm_hours,
                "set only with dashboard=true and scheduler=slurm (the alarm reads Slurm's node "
                "states on the dashboard)",
            )
        if config.dashboard:
            self.dashboard = ClusterDashboard(
                self,
                "Dashboard",
                cluster=self.cluster,
                scheduler=self.scheduler,
                acceptance=self.acceptance,
                idle_alarm_hours=config.idle_alarm_hours,
            )
        # The outputs cdk-trn reads (ClusterName, NodeHourlyPrice, Slurm*) are the cluster's and
        # the scheduler's own; these describe the cluster to a person.
        summary = self.cluster.summary()
        for key, label in (
            ("instance_type", "InstanceType"),
            ("nodes", "Nodes"),
            ("chips", "TrainiumChips"),
            ("peak_bf16_pflops", "PeakBf16Pflops"),
            ("efa_tbps", "EfaTbps"),
            ("hbm_gib", "HbmGiB"),
        ):
            cdk.CfnOutput(self, label, value=str(summary[key]), description=f"Cluster {key}")
        cdk.CfnOutput(
            self,
            "AutoScalingGroupName",
            value=self.cluster.auto_scaling_group.ref,
            description="Auto Scaling group of the nodes",
        )

    def _image_outputs(self, image: NeuronTrainingImage) -> None:
        """Which training image the cluster runs and, for the bundled one, its versions (the
        acceptance report shows the versions the nodes actually run)."""
        cdk.CfnOutput(
            self, "TrainingImage", value=image.description, description="training image source"
        )
        if not image.is_bundled:
            return
        for key, label in (
            ("neuron_sdk", "NeuronSdk"),
            ("torch", "Torch"),
            ("torch_neuronx", "TorchNeuronx"),
            ("slurm", "Slurm"),
        ):
            cdk.CfnOutput(
                self,
                f"TrainingImage{label}",
                value=bundled_versions()[key],
                description=f"bundled training image: {key} version",
            )
