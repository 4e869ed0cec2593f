"""The dashboard's spend rate and idle node-hours, and the idle alarm: off by default, on with
``-c idleAlarmHours=N`` (every node idle N hours in a row, to the cluster's topic), refused
without Slurm or out of range."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.errors import CdkTrnError
from stacks import build_default_app
from stacks.config import AppConfig


def _cluster_template(**config: Any) -> tuple[Any, Template]:
    default = build_default_app(
        cdk.App(), AppConfig(enclave_vault=False, acceptance=False, **config)
    )
    return default, Template.from_stack(default.cluster_stack)


@pytest.fixture(scope="module")
def with_alarm() -> tuple[Any, Template]:
    return _cluster_template(idle_alarm_hours=12, hourly_price=40.0)


def _widget_text(template: Template) -> str:
    [dashboard] = template.find_resources("AWS::CloudWatch::Dashboard").values()
    return json.dumps(dashboard["Properties"]["DashboardBody"])


def test_the_dashboard_shows_the_spend_rate_and_idle_node_hours(with_alarm):
    _, template = with_alarm
    body = _widget_text(template)
    assert "Spend rate of the nodes ($/h)" in body
    assert "in_service * 40" in body  # nodes in service x the given price
    assert "Idle node-hours per hour" in body
    assert "IF(in_service - FILL(allocated, 0) - FILL(mixed, 0) > 0" in body


def test_the_idle_alarm_is_off_by_default():
    _, template = _cluster_template()
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert not [a for a in alarms.values() if "idle" in a["Properties"]["AlarmDescription"]]


def test_idle_alarm_hours_alarms_after_n_idle_hours_to_the_topic(with_alarm):
    default, template = with_alarm
    stack = default.cluster_stack
    topic = stack.get_logical_id(stack.cluster.events_topic.node.default_child)
    [idle] = [
        a["Properties"]
        for a in template.find_resources("AWS::CloudWatch::Alarm").values()
        if "idle for 12 h" in a["Properties"]["AlarmDescription"]
    ]
    assert idle["EvaluationPeriods"] == 12 and idle["DatapointsToAlarm"] == 12
    assert idle["AlarmActions"] == [{"Ref": topic}]
    assert idle["TreatMissingData"] == "notBreaching"
    [expression] = [m for m in idle["Metrics"] if "Expression" in m]
    assert "FILL(busy_a, 0) + FILL(busy_m, 0) == 0" in expression["Expression"]
    stats = {m["Id"]: m["MetricStat"] for m in idle["Metrics"] if "MetricStat" in m}
    assert {s["Period"] for s in stats.values()} == {3600}
    assert stats["busy_a"]["Metric"]["MetricName"] == "NodesAllocated"
    assert stats["busy_a"]["Stat"] == "Maximum"  # busy at any time keeps the hour from counting


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"idle_alarm_hours": 0}, "idle_alarm_hours must be a whole number of hours from 1 to 168"),
        ({"idle_alarm_hours": 169}, "from 1 to 168, got 169"),
        (
            {"idle_alarm_hours": 2, "scheduler": "none", "acceptance": False},
            "idleAlarmHours must be set only with",
        ),
        ({"idle_alarm_hours": 2, "dashboard": False}, "idleAlarmHours must be set only with"),
    ],
)
def test_bad_idle_alarm_settings_are_refused(config, message):
    with pytest.raises(CdkTrnError, match=message):
        build_default_app(
            cdk.App(), AppConfig(**{"enclave_vault": False, "acceptance": False, **config})
        )


def test_idle_alarm_hours_context_is_read():
    app = cdk.App(context={"idleAlarmHours": "6"})
    assert AppConfig.from_context(app.node).idle_alarm_hours == 6
