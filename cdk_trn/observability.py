"""ClusterDashboard: the cluster at a glance in one CloudWatch dashboard, and alarms that reach the
cluster's encrypted SNS topic.

What it shows, and where each figure comes from:

- **Nodes in service**: the nodes' Auto Scaling group (``AWS/AutoScaling``
  ``GroupInServiceInstances`` against ``GroupDesiredCapacity``; the cluster enables the group's
  metrics collection).
- **Slurm node states and queue depth** (with a ``SlurmScheduler``): ``cdk-trn/Slurm``, published
  every minute by the controller (``sinfo``/``squeue`` in its container,
  ``cdk_trn_runtime/monitoring/slurm_metrics.sh``).
- **NeuronCore utilization, device memory, EFA traffic and drops** (with a ``SlurmScheduler``,
  whose container on each node runs the collector): ``cdk-trn/Node``, published every minute by
  each node from ``neuron-monitor`` and the EFA devices' hardware counters
  (``cdk_trn_runtime/monitoring/node_metrics.sh``).
- **FSx for Lustre throughput and metadata operations** (with a file system): ``AWS/FSx``
  ``DataReadBytes``, ``DataWriteBytes`` and ``MetadataOperations`` by ``FileSystemId``.
- **The acceptance figures** (with an ``AcceptanceRun``): the run's exported figures as measured
  at deploy, and its handlers' errors.

Every custom metric carries one dimension, ``Cluster`` = the cluster's name (names in
``cdk_trn_runtime.contract``). The instances publish through the ``monitoring`` VPC endpoint
(``TrainingNetwork``), each role only into its own namespace.

Alarms, both to ``cluster.events_topic``: a node drained (``NodesDrained`` > 0, with a
scheduler) and a failed acceptance run (its handlers' ``Errors`` > 0, with an acceptance run).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from constructs import Construct

from cdk_trn.acceptance import AcceptanceRun
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.errors import invalid
from cdk_trn.interfaces import ITrainingFileSystem
from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.contract import (
    FIGURES,
    METRIC_DIMENSION_CLUSTER,
    METRICS_NAMESPACE_NODE,
    METRICS_NAMESPACE_SLURM,
    SLURM_JOB_METRICS,
    SLURM_NODE_STATE_METRICS,
)

#: The publishers send a sample a minute; the dashboard and the alarms look at 5 minutes.
PERIOD = cdk.Duration.minutes(5)
WIDTH = 12
HEIGHT = 6


class ClusterDashboard(Construct):
    """A CloudWatch dashboard of ``cluster`` and its alarms.

    :param cluster: the ``TrainiumCluster``.
    :param scheduler: its ``SlurmScheduler``: Slurm node states and queue depth, the nodes'
        NeuronCore, device memory and EFA metrics, and the drained-node alarm. Default: none
        (those widgets and that alarm are left out: nothing publishes them without Slurm).
    :param file_system: the shared file system: its throughput and metadata operations. Default:
        ``cluster.file_system``.
    :param acceptance: the ``AcceptanceRun``: its figures and the failed-run alarm. Default: none.
    :param dashboard_name: the dashboard's name. Default: ``<cluster name>-cluster``.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: TrainiumCluster,
        scheduler: SlurmScheduler | None = None,
        file_system: ITrainingFileSystem | None = None,
        acceptance: AcceptanceRun | None = None,
        dashboard_name: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        if not isinstance(cluster, TrainiumCluster):
            raise invalid("cluster", type(cluster).__name__, "a TrainiumCluster")
        if scheduler is not None and scheduler.cluster is not cluster:
            raise invalid("scheduler", scheduler.node.path, f"the scheduler of {cluster.node.path}")
        if acceptance is not None and acceptance.cluster is not cluster:
            raise invalid("acceptance", acceptance.node.path, f"the run of {cluster.node.path}")
        self.cluster = cluster
        self._dimensions = {METRIC_DIMENSION_CLUSTER: cluster.cluster_name}
        file_system = file_system or cluster.file_system
        name = dashboard_name or f"{cluster.cluster_name}-cluster"

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=name, default_interval=cdk.Duration.hours(3)
        )
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown=f"# {cluster.cluster_name}: {cluster.nodes} x "
                f"{cluster.spec.instance_type}",
                width=2 * WIDTH,
                height=1,
            )
        )
        self.dashboard.add_widgets(self._nodes_in_service())
        if scheduler is not None:
            self._slurm()
            self._node_metrics()
        if file_system is not None:
            self._file_system(file_system)
        if acceptance is not None:
            self._acceptance(acceptance)

    # --- metrics ------------------------------------------------------------------------------

    def _custom(self, namespace: str, name: str, statistic: str, label: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=namespace,
            metric_name=name,
            dimensions_map=self._dimensions,
            statistic=statistic,
            period=PERIOD,
            label=label,
        )

    def _alarm(self, id: str, alarm: cloudwatch.Alarm) -> None:
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.cluster.events_topic))
        self.alarms[id] = alarm

    # --- widgets ------------------------------------------------------------------------------

    def _nodes_in_service(self) -> cloudwatch.IWidget:
        group = {"AutoScalingGroupName": self.cluster.auto_scaling_group.ref}

        def metric(name: str, label: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/AutoScaling",
                metric_name=name,
                dimensions_map=group,
                statistic="Minimum",
                period=cdk.Duration.minutes(1),
                label=label,
            )

        return cloudwatch.GraphWidget(
            title="Nodes in service",
            left=[
                metric("GroupInServiceInstances", "in service"),
                metric("GroupDesiredCapacity", "desired"),
            ],
            left_y_axis=cloudwatch.YAxisProps(min=0, label="nodes", show_units=False),
            width=2 * WIDTH,
            height=HEIGHT,
        )

    def _slurm(self) -> None:
        states = [
            self._custom(METRICS_NAMESPACE_SLURM, name, "Maximum", name.removeprefix("Nodes"))
            for name in SLURM_NODE_STATE_METRICS
        ]
        jobs = [
            self._custom(METRICS_NAMESPACE_SLURM, name, "Maximum", name.removeprefix("Jobs"))
            for name in SLURM_JOB_METRICS
        ]
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Slurm node states",
                left=states,
                stacked=True,
                left_y_axis=cloudwatch.YAxisProps(min=0, label="nodes", show_units=False),
                width=WIDTH,
                height=HEIGHT,
            ),
            cloudwatch.GraphWidget(
                title="Slurm queue depth",
                left=jobs,
                left_y_axis=cloudwatch.YAxisProps(min=0, label="jobs", show_units=False),
                width=WIDTH,
                height=HEIGHT,
            ),
        )
        drained = self._custom(METRICS_NAMESPACE_SLURM, "NodesDrained", "Maximum", "drained")
        self._alarm(
            "NodesDrained",
            drained.create_alarm(
                self,
                "NodesDrainedAlarm",
                alarm_description=(
                    f"{self.cluster.cluster_name}: a Slurm node is drained (cdk-trn status shows "
                    "the reason; a hardware reason also replaces the node)"
                ),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        )

    def _node_metrics(self) -> None:
        def node(name: str, statistic: str, label: str) -> cloudwatch.Metric:
            return self._custom(METRICS_NAMESPACE_NODE, name, statistic, label)

        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="NeuronCore utilization (%)",
                left=[
                    node("NeuronCoreUtilization", "Average", "mean of nodes"),
                    node("NeuronCoreUtilization", "Minimum", "lowest node"),
                ],
                left_y_axis=cloudwatch.YAxisProps(min=0, max=100, show_units=False),
                width=WIDTH,
                height=HEIGHT,
            ),
            cloudwatch.GraphWidget(
                title="Neuron device memory in use",
                left=[
                    node("NeuronDeviceMemoryUsed", "Maximum", "fullest node"),
                    node("NeuronDeviceMemoryUsed", "Average", "mean of nodes"),
                ],
                left_y_axis=cloudwatch.YAxisProps(min=0),
                width=WIDTH,
                height=HEIGHT,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="EFA traffic (all nodes)",
                left=[
                    node("EfaTxBytes", "Sum", "sent"),
                    node("EfaRxBytes", "Sum", "received"),
                ],
                left_y_axis=cloudwatch.YAxisProps(min=0),
                width=WIDTH,
                height=HEIGHT,
            ),
            cloudwatch.GraphWidget(
                title="EFA receive drops (all nodes)",
                left=[node("EfaRxDrops", "Sum", "dropped packets")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False),
                width=WIDTH,
                height=HEIGHT,
            ),
        )

    def _file_system(self, file_system: ITrainingFileSystem) -> None:
        def fsx(name: str, label: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/FSx",
                metric_name=name,
                dimensions_map={"FileSystemId": file_system.file_system_id},
                statistic="Sum",
                period=PERIOD,
                label=label,
            )

        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="FSx for Lustre throughput",
                left=[fsx("DataReadBytes", "read"), fsx("DataWriteBytes", "written")],
                left_y_axis=cloudwatch.YAxisProps(min=0),
                width=WIDTH,
                height=HEIGHT,
            ),
            cloudwatch.GraphWidget(
                title="FSx for Lustre metadata operations",
                left=[fsx("MetadataOperations", "operations")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False),
                width=WIDTH,
                height=HEIGHT,
            ),
        )

    def _acceptance(self, acceptance: AcceptanceRun) -> None:
        rows = "\n".join(
            f"| {FIGURES[name][1]} | {acceptance.figure(name)} {FIGURES[name][0]} |"
            for name in acceptance.exported_figures
        )
        # The custom resource's function answers failures itself: its failure count, not
        # Lambda's Errors metric, tells a failed run.
        errors = cloudwatch.MathExpression(
            expression="failures",
            using_metrics={"failures": acceptance.provider.metric_failures(period=PERIOD)},
            label="acceptance run failures",
            period=PERIOD,
        )
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown="## Acceptance run (at the last deploy)\n\n| figure | value |\n|---|---|\n"
                + rows,
                width=WIDTH,
                height=HEIGHT,
            ),
            cloudwatch.GraphWidget(
                title="Acceptance run failures", left=[errors], width=WIDTH, height=HEIGHT
            ),
        )
        self._alarm(
            "AcceptanceFailed",
            errors.create_alarm(
                self,
                "AcceptanceFailedAlarm",
                alarm_description=(
                    f"{self.cluster.cluster_name}: the acceptance run failed (its reason is in "
                    "the stack events and the handlers' logs)"
                ),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        )
