"""ClusterDashboard in the default app's cluster stack: the widgets' metrics are the ones the
publishers send (contract names) and AWS's (AutoScaling, FSx, Lambda); the alarms go to the
cluster's encrypted topic; the instances may publish only into their own namespaces, through the
monitoring endpoint; ``-c dashboard=false`` turns it off."""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.errors import CdkTrnError
from cdk_trn.observability import ClusterDashboard
from cdk_trn_runtime import contract
from stacks import build_default_app
from stacks.config import AppConfig


@pytest.fixture(scope="module")
def default(default_app) -> Any:
    """The session's default app (tests/support/default_app.py): its constructs."""
    return default_app.default


@pytest.fixture(scope="module")
def template(default_app) -> Template:
    return default_app.assertions(default_app.default.cluster_stack)


def _body(stack: cdk.Stack, template: Template) -> dict:
    """The dashboard body with every token rendered as a marker naming what it refers to."""
    [dashboard] = template.find_resources("AWS::CloudWatch::Dashboard").values()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]

    def text(part: Any) -> str:
        if isinstance(part, str):
            return part
        if "Ref" in part:
            return f"<Ref:{part['Ref']}>"
        if "Fn::GetAtt" in part:
            return f"<GetAtt:{'.'.join(part['Fn::GetAtt'])}>"
        return "<token>"

    return json.loads("".join(text(p) for p in parts))


def _metrics(body: dict) -> list[list]:
    found = []
    for widget in body["widgets"]:
        for metric in widget.get("properties", {}).get("metrics", []):
            found.append(metric)
    return found


def _named(body: dict) -> set[tuple[str, str]]:
    """(namespace, metric name) of every plain metric of the dashboard."""
    named = set()
    for metric in _metrics(body):
        if isinstance(metric[0], str) and "/" in metric[0] and len(metric) > 1:
            named.add((metric[0], metric[1]))
    return named


def test_dashboard_shows_every_published_and_aws_metric(default, template):
    body = _body(default.cluster_stack, template)
    named = _named(body)
    for name in (*contract.SLURM_NODE_STATE_METRICS, *contract.SLURM_JOB_METRICS):
        assert (contract.METRICS_NAMESPACE_SLURM, name) in named
    for name in (*contract.NODE_NEURON_METRICS, *contract.NODE_EFA_COUNTERS.values()):
        assert (contract.METRICS_NAMESPACE_NODE, name) in named
    assert ("AWS/AutoScaling", "GroupInServiceInstances") in named
    assert {("AWS/FSx", "DataReadBytes"), ("AWS/FSx", "DataWriteBytes")} <= named
    assert ("AWS/FSx", "MetadataOperations") in named
    provider = default.cluster_stack.acceptance.provider
    assert (contract.METRICS_NAMESPACE_DEPLOY_TIME, provider.function_name) in named


def test_custom_metrics_carry_the_cluster_dimension_aws_metrics_their_resources(default, template):
    stack = default.cluster_stack
    body = _body(stack, template)
    cluster = default.cluster_stack.cluster
    group = stack.get_logical_id(cluster.auto_scaling_group)
    for metric in _metrics(body):
        if metric[0] in (contract.METRICS_NAMESPACE_SLURM, contract.METRICS_NAMESPACE_NODE):
            assert metric[2:4] == [contract.METRIC_DIMENSION_CLUSTER, cluster.cluster_name]
        elif metric[0] == "AWS/AutoScaling":
            assert metric[2:4] == ["AutoScalingGroupName", f"<Ref:{group}>"]
        elif metric[0] == "AWS/FSx":
            assert metric[2] == "FileSystemId"
            assert metric[3].startswith("<")  # the storage stack's file system (an import)


def test_dashboard_shows_the_acceptance_figures_from_the_run(default, template):
    body = _body(default.cluster_stack, template)
    stack = default.cluster_stack
    run = stack.get_logical_id(stack.acceptance.resource.node.default_child)
    text = "\n".join(w["properties"].get("markdown", "") for w in body["widgets"])
    for name in stack.acceptance.exported_figures:
        assert f"{contract.FIGURES[name][1]} | <GetAtt:{run}.{name}>" in text


def test_alarms_on_drained_nodes_and_failed_acceptance_go_to_the_encrypted_topic(default, template):
    stack = default.cluster_stack
    topic = stack.get_logical_id(stack.cluster.events_topic.node.default_child)
    resources = template.to_json()["Resources"]
    assert resources[topic]["Properties"]["KmsMasterKeyId"]
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == 2
    by_metric = {}
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": topic}]
        assert props["ComparisonOperator"] == "GreaterThanThreshold"
        assert props["Threshold"] == 0
        assert props["TreatMissingData"] == "notBreaching"
        if "MetricName" in props:
            used = [{k: props[k] for k in ("Namespace", "MetricName", "Dimensions") if k in props}]
        else:
            used = [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
        by_metric["+".join(sorted(m["MetricName"] for m in used))] = used
    [drained] = by_metric["NodesDrained"]
    assert drained["Namespace"] == contract.METRICS_NAMESPACE_SLURM
    assert drained["Dimensions"] == [
        {"Name": contract.METRIC_DIMENSION_CLUSTER, "Value": stack.cluster.cluster_name}
    ]
    # The acceptance function answers failures itself: the alarm counts its FAILED answers
    # (a metric filter on its log group), not Lambda's Errors.
    provider = stack.acceptance.provider
    [failures] = by_metric[provider.function_name]
    assert failures["Namespace"] == contract.METRICS_NAMESPACE_DEPLOY_TIME
    filters = template.find_resources(
        "AWS::Logs::MetricFilter",
        {
            "Properties": {
                "LogGroupName": {
                    "Ref": stack.get_logical_id(provider.log_group.node.default_child)
                },
                "FilterPattern": f'"{contract.DEPLOY_TIME_FAILURE_MARK}"',
            }
        },
    )
    assert len(filters) == 1


def _put_metric_statements(template: Template) -> dict[str, dict]:
    found = {}
    for policy in template.find_resources("AWS::IAM::ManagedPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Action"] == "cloudwatch:PutMetricData":
                [role] = policy["Properties"]["Roles"]
                found[role["Ref"]] = statement
    return found


def test_instances_publish_only_into_their_own_namespace(default, template):
    stack = default.cluster_stack
    node_role = stack.get_logical_id(stack.cluster.role.node.default_child)
    controller_role = stack.get_logical_id(stack.scheduler.role.node.default_child)
    statements = _put_metric_statements(template)
    assert set(statements) == {node_role, controller_role}
    for role, namespace in (
        (node_role, contract.METRICS_NAMESPACE_NODE),
        (controller_role, contract.METRICS_NAMESPACE_SLURM),
    ):
        assert statements[role]["Resource"] == "*"
        assert statements[role]["Condition"] == {
            "StringEquals": {"cloudwatch:namespace": namespace}
        }


def test_metrics_and_replacement_requests_leave_through_vpc_endpoints(default, default_app):
    storage = default_app.template(default.storage_stack)
    services = json.dumps(
        [
            r["Properties"]["ServiceName"]
            for r in storage["Resources"].values()
            if r["Type"] == "AWS::EC2::VPCEndpoint"
        ]
    )
    assert re.search(r"\.monitoring\"", services), services
    assert re.search(r"\.autoscaling\"", services), services


def test_the_nodes_group_collects_the_in_service_metric(default, template):
    stack = default.cluster_stack
    group = template.to_json()["Resources"][stack.get_logical_id(stack.cluster.auto_scaling_group)]
    assert group["Properties"]["MetricsCollection"] == [{"Granularity": "1Minute"}]


def test_dashboard_false_leaves_out_the_dashboard_and_its_alarms():
    app = cdk.App(context={"dashboard": "false"})
    default = build_default_app(app, AppConfig.from_context(app.node))
    template = Template.from_stack(default.cluster_stack)
    template.resource_count_is("AWS::CloudWatch::Dashboard", 0)
    template.resource_count_is("AWS::CloudWatch::Alarm", 0)


def test_dashboard_context_key_is_validated():
    app = cdk.App(context={"dashboard": "maybe"})
    with pytest.raises(CdkTrnError, match="dashboard must be true or false, got 'maybe'"):
        AppConfig.from_context(app.node)


def test_a_scheduler_of_another_cluster_is_refused():
    # An app of its own: the dashboard is added to the stack before it is refused.
    stack = build_default_app(cdk.App(), AppConfig(enclave_vault=False)).cluster_stack
    with pytest.raises(CdkTrnError, match="scheduler must be the scheduler of"):
        ClusterDashboard(
            stack,
            "AnotherDashboard",
            cluster=stack.cluster,
            scheduler=_FakeScheduler(),  # type: ignore[arg-type]
        )


class _FakeScheduler:
    """Test double: a scheduler that serves another cluster."""

    cluster = object()

    class node:  # noqa: N801
        path = "Elsewhere/Slurm"
