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

- **Spend rate and idle node-hours**: nodes in service x the node price (``cluster.node_price``:
  the given ``hourly_price`` or the catalog's estimate; left out when unknown) in US dollars per
  hour, and (with a scheduler) the node-hours each hour the nodes were in service without a job
  (in service less Slurm's allocated and mixed nodes, hourly averages).

Alarms, all to ``cluster.events_topic``: a node drained (``NodesDrained`` > 0, with a
scheduler), a failed acceptance run (its handlers' ``Errors`` > 0, with an acceptance run) and,
off by default (``idle_alarm_hours``), every node idle for that many hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
#: The idle figures and the idle alarm look at whole hours.
HOUR = cdk.Duration.hours(1)
#: CloudWatch evaluates at most 7 days of hourly periods.
MAX_IDLE_ALARM_HOURS = 168


@dataclass(frozen=True)
class _Graph:
    """One graph of the dashboard: its lines (metric name, statistic, label) and its y axis,
    which starts at 0."""

    title: str
    lines: tuple[tuple[str, str, str], ...]
    y_label: str | None = None
    y_max: int | None = None
    #: False for counts (nodes, jobs, packets, operations): the axis shows no unit.
    units: bool = True
    stacked: bool = False
    width: int = WIDTH


@dataclass(frozen=True)
class _Source:
    """Where the metrics of a row of graphs come from."""

    namespace: str
    dimensions: Mapping[str, str]
    period: cdk.Duration = PERIOD


#: The dashboard's graphs, row by row; each row's metrics come from one source: the nodes' Auto
#: Scaling group, the controller's and the nodes' publishers (with a scheduler), the file system.
_ROWS: tuple[tuple[str, tuple[_Graph, ...]], ...] = (
    (
        "group",
        (
            _Graph(
                "Nodes in service",
                (
                    ("GroupInServiceInstances", "Minimum", "in service"),
                    ("GroupDesiredCapacity", "Minimum", "desired"),
                ),
                y_label="nodes",
                units=False,
                width=2 * WIDTH,
            ),
        ),
    ),
    (
        "slurm",
        (
            _Graph(
                "Slurm node states",
                tuple((n, "Maximum", n.removeprefix("Nodes")) for n in SLURM_NODE_STATE_METRICS),
                y_label="nodes",
                units=False,
                stacked=True,
            ),
            _Graph(
                "Slurm queue depth",
                tuple((n, "Maximum", n.removeprefix("Jobs")) for n in SLURM_JOB_METRICS),
                y_label="jobs",
                units=False,
            ),
        ),
    ),
    (
        "node",
        (
            _Graph(
                "NeuronCore utilization (%)",
                (
                    ("NeuronCoreUtilization", "Average", "mean of nodes"),
                    ("NeuronCoreUtilization", "Minimum", "lowest node"),
                ),
                y_max=100,
                units=False,
            ),
            _Graph(
                "Neuron device memory in use",
                (
                    ("NeuronDeviceMemoryUsed", "Maximum", "fullest node"),
                    ("NeuronDeviceMemoryUsed", "Average", "mean of nodes"),
                ),
            ),
        ),
    ),
    (
        "node",
        (
            _Graph(
                "EFA traffic (all nodes)",
                (("EfaTxBytes", "Sum", "sent"), ("EfaRxBytes", "Sum", "received")),
            ),
            _Graph(
                "EFA receive drops (all nodes)",
                (("EfaRxDrops", "Sum", "dropped packets"),),
                units=False,
            ),
        ),
    ),
    (
        "fsx",
        (
            _Graph(
                "FSx for Lustre throughput",
                (("DataReadBytes", "Sum", "read"), ("DataWriteBytes", "Sum", "written")),
            ),
            _Graph(
                "FSx for Lustre metadata operations",
                (("MetadataOperations", "Sum", "operations"),),
                units=False,
            ),
        ),
    ),
)


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
    :param idle_alarm_hours: alarm when nodes were in service and none ran a job (no Slurm node
        allocated or mixed) for this many hours in a row, 1 to 168: idle capacity is paid for.
        Needs ``scheduler``. Default: none (no alarm).
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
        idle_alarm_hours: int | None = None,
    ) -> None:
        super().__init__(scope, id)
        if idle_alarm_hours is not None:
            if (
                isinstance(idle_alarm_hours, bool)
                or not isinstance(idle_alarm_hours, int)
                or not 1 <= idle_alarm_hours <= MAX_IDLE_ALARM_HOURS
            ):
                raise invalid(
                    f"{self.node.path}: idle_alarm_hours",
                    idle_alarm_hours,
                    f"a whole number of hours from 1 to {MAX_IDLE_ALARM_HOURS}",
                )
            if scheduler is None:
                raise invalid(
                    f"{self.node.path}: idle_alarm_hours",
                    idle_alarm_hours,
                    "set only with a scheduler (Slurm's node states tell an idle node)",
                )
        if not isinstance(cluster, TrainiumCluster):
            raise invalid("cluster", type(cluster).__name__, "a TrainiumCluster")
        if scheduler is not None and scheduler.cluster is not cluster:
            raise invalid("scheduler", scheduler.node.path, f"the scheduler of {cluster.node.path}")
        if acceptance is not None and acceptance.cluster is not cluster:
            raise invalid("acceptance", acceptance.node.path, f"the run of {cluster.node.path}")
        self.cluster = cluster
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
        in_cluster = {METRIC_DIMENSION_CLUSTER: cluster.cluster_name}
        sources = {
            "group": _Source(
                "AWS/AutoScaling",
                {"AutoScalingGroupName": cluster.auto_scaling_group.ref},
                period=cdk.Duration.minutes(1),
            )
        }
        if scheduler is not None:
            sources["slurm"] = _Source(METRICS_NAMESPACE_SLURM, in_cluster)
            sources["node"] = _Source(METRICS_NAMESPACE_NODE, in_cluster)
        if file_system is not None:
            sources["fsx"] = _Source("AWS/FSx", {"FileSystemId": file_system.file_system_id})
        for source, graphs in _ROWS:
            if source in sources:
                self.dashboard.add_widgets(*(_graph(g, sources[source]) for g in graphs))
            if source == "group":
                self._cost_row(sources, idle_alarm_hours)
        if scheduler is not None:
            self._alarm(
                "NodesDrained",
                _metric(sources["slurm"], "NodesDrained", "Maximum", "drained"),
                "a Slurm node is drained (cdk-trn status shows the reason; a hardware reason "
                "also replaces the node)",
            )
        if acceptance is not None:
            self._acceptance(acceptance)

    def _alarm(
        self, id: str, metric: cloudwatch.Metric | cloudwatch.MathExpression, description: str
    ) -> None:
        """An alarm ``<id>Alarm`` to the cluster's topic when ``metric`` is above 0; no data is
        no alarm."""
        alarm = metric.create_alarm(
            self,
            f"{id}Alarm",
            alarm_description=f"{self.cluster.cluster_name}: {description}",
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.cluster.events_topic))
        self.alarms[id] = alarm

    def _cost_row(self, sources: Mapping[str, _Source], idle_alarm_hours: int | None) -> None:
        """Spend rate (nodes in service x node price) and idle node-hours per hour; the idle
        alarm."""
        group = _Source(sources["group"].namespace, sources["group"].dimensions, period=HOUR)
        widgets: list[cloudwatch.IWidget] = []
        price = self.cluster.node_price
        if price is not None:
            spend = cloudwatch.MathExpression(
                expression=f"in_service * {price.usd:g}",
                using_metrics={
                    "in_service": _metric(
                        sources["group"], "GroupInServiceInstances", "Average", "in service"
                    )
                },
                label=f"US dollars per hour (nodes x ${price.usd:g}, {price.label()})"[:250],
                period=sources["group"].period,
            )
            widgets.append(_expression_graph("Spend rate of the nodes ($/h)", spend, "$/h"))
        if "slurm" in sources:
            hourly = _Source(sources["slurm"].namespace, sources["slurm"].dimensions, period=HOUR)
            using = {
                "in_service": _metric(group, "GroupInServiceInstances", "Average", "in service"),
                "allocated": _metric(hourly, "NodesAllocated", "Average", "allocated"),
                "mixed": _metric(hourly, "NodesMixed", "Average", "mixed"),
            }
            idle = "in_service - FILL(allocated, 0) - FILL(mixed, 0)"
            idle_hours = cloudwatch.MathExpression(
                expression=f"IF({idle} > 0, {idle}, 0)",
                using_metrics=using,
                label="idle node-hours (in service, no job)",
                period=HOUR,
            )
            widgets.append(_expression_graph("Idle node-hours per hour", idle_hours, "node-hours"))
            if idle_alarm_hours is not None:
                # Busy at any time of the hour (the maximum) keeps the hour from counting.
                all_idle = cloudwatch.MathExpression(
                    expression="IF(in_service > 0 AND "
                    "FILL(busy_a, 0) + FILL(busy_m, 0) == 0, 1, 0)",
                    using_metrics={
                        "in_service": _metric(group, "GroupInServiceInstances", "Minimum", "in"),
                        "busy_a": _metric(hourly, "NodesAllocated", "Maximum", "allocated"),
                        "busy_m": _metric(hourly, "NodesMixed", "Maximum", "mixed"),
                    },
                    label="every node idle this hour",
                    period=HOUR,
                )
                alarm = all_idle.create_alarm(
                    self,
                    "IdleAlarm",
                    alarm_description=f"{self.cluster.cluster_name}: every node has been idle "
                    f"for {idle_alarm_hours} h while in service (paid for); run jobs, scale "
                    "the cluster in, or destroy the cluster stack",
                    threshold=0,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=idle_alarm_hours,
                    datapoints_to_alarm=idle_alarm_hours,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.cluster.events_topic))
                self.alarms["Idle"] = alarm
        if widgets:
            self.dashboard.add_widgets(*widgets)

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
            errors,
            "the acceptance run failed (its reason is in the stack events and the handlers' logs)",
        )


def _metric(source: _Source, name: str, statistic: str, label: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=source.namespace,
        metric_name=name,
        dimensions_map=dict(source.dimensions),
        statistic=statistic,
        period=source.period,
        label=label,
    )


def _graph(graph: _Graph, source: _Source) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(
        title=graph.title,
        left=[_metric(source, *line) for line in graph.lines],
        # None leaves a setting out of the widget (CloudWatch's default) rather than writing it.
        stacked=graph.stacked or None,
        left_y_axis=cloudwatch.YAxisProps(
            min=0,
            max=graph.y_max,
            label=graph.y_label,
            show_units=None if graph.units else False,
        ),
        width=graph.width,
        height=HEIGHT,
    )


def _expression_graph(title: str, metric: cloudwatch.IMetric, unit: str) -> cloudwatch.GraphWidget:
    """A computed metric (spend, idle hours) on a graph of the dashboard's size, from 0, in ``unit``
    (the table's graphs, :func:`_graph`, plot named metrics)."""
    return cloudwatch.GraphWidget(
        title=title,
        left=[metric],
        left_y_axis=cloudwatch.YAxisProps(min=0, label=unit, show_units=False),
        width=WIDTH,
        height=HEIGHT,
    )
