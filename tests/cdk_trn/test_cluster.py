import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match

from cdk_trn.capacity import Capacity
from cdk_trn.catalog import INSTANCE_SPECS
from tests.support.cfn import lint_findings, template_of
from tests.support.stacks import PLACEMENTS, cluster_stack


@pytest.fixture(scope="module")
def default_template():
    stack, _ = cluster_stack()
    return template_of(stack)


def launch_template_data(template):
    (lt,) = template.find_resources("AWS::EC2::LaunchTemplate").values()
    return lt["Properties"]["LaunchTemplateData"]


def test_efa_security_group_allows_all_traffic_to_and_from_itself(default_template):
    (group_id,) = default_template.find_resources(
        "AWS::EC2::SecurityGroup",
        {"Properties": {"GroupDescription": Match.string_like_regexp("Trainium nodes")}},
    )
    self_ref = {"Fn::GetAtt": [group_id, "GroupId"]}
    default_template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {"IpProtocol": "-1", "GroupId": self_ref, "SourceSecurityGroupId": self_ref},
    )
    default_template.has_resource_properties(
        "AWS::EC2::SecurityGroupEgress",
        {"IpProtocol": "-1", "GroupId": self_ref, "DestinationSecurityGroupId": self_ref},
    )


def test_node_security_group_admits_nothing_from_outside(default_template):
    ingress = default_template.find_resources("AWS::EC2::SecurityGroupIngress")
    node_rules = [r for r in ingress.values() if "Cluster" in str(r["Properties"]["GroupId"])]
    assert all("SourceSecurityGroupId" in r["Properties"] for r in node_rules)
    groups = default_template.find_resources("AWS::EC2::SecurityGroup")
    node_group = next(
        g for g in groups.values() if "Trainium" in g["Properties"]["GroupDescription"]
    )
    assert "SecurityGroupIngress" not in node_group["Properties"]


def test_launch_template_has_17_interfaces_one_with_an_ip(default_template):
    interfaces = launch_template_data(default_template)["NetworkInterfaces"]
    assert len(interfaces) == 17
    assert len({i["NetworkCardIndex"] for i in interfaces}) == 16
    assert sum(i.get("InterfaceType") == "efa-only" for i in interfaces) == 16
    assert sum(i.get("InterfaceType") != "efa-only" for i in interfaces) == 1


def test_launch_template_requires_imdsv2_and_encrypts_the_root_volume(default_template):
    data = launch_template_data(default_template)
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    (mapping,) = data["BlockDeviceMappings"]
    assert mapping["Ebs"]["Encrypted"] is True and mapping["Ebs"]["VolumeType"] == "gp3"
    assert data["Monitoring"] == {"Enabled": True}


def test_ami_resolves_from_the_neuron_dlami_ssm_parameter_at_deploy_time(default_template):
    params = default_template.to_json()["Parameters"]
    dlami = [p for p in params.values() if "neuron/dlami" in str(p.get("Default", ""))]
    assert dlami and dlami[0]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert dlami[0]["Default"] == "/aws/service/neuron/dlami/base/amazon-linux-2023/latest/image_id"


def test_group_is_fixed_at_n_nodes_and_waits_for_n_health_signals(default_template):
    default_template.has_resource(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "Properties": {"MinSize": "2", "MaxSize": "2", "DesiredCapacity": "2"},
            "CreationPolicy": {"ResourceSignal": {"Count": 2, "Timeout": "PT45M"}},
        },
    )


def test_on_demand_capacity_uses_a_cluster_placement_group(default_template):
    default_template.has_resource_properties("AWS::EC2::PlacementGroup", {"Strategy": "cluster"})
    default_template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup", {"PlacementGroup": Match.any_value()}
    )


def test_capacity_block_targets_the_reservation_without_placement_group():
    stack, _ = cluster_stack(capacity=Capacity.capacity_block("cr-0123456789abcdef0"))
    template = template_of(stack)
    data = launch_template_data(template)
    assert data["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    assert data["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
    }
    template.resource_count_is("AWS::EC2::PlacementGroup", 0)


def test_ultraserver_nodes_are_told_their_ultraserver_size():
    _, cluster = cluster_stack("trn2u.48xlarge", nodes=8)
    assert "CDK_TRN_ULTRASERVER_SIZE=4" in cluster._user_data()


def test_other_nodes_skip_the_ultraserver_environment():
    _, cluster = cluster_stack("trn2.48xlarge")
    assert "CDK_TRN_ULTRASERVER_SIZE=0" in cluster._user_data()


def test_bootstrap_checks_the_catalog_device_counts():
    _, cluster = cluster_stack("trn1.32xlarge")
    user_data = cluster._user_data()
    assert "CDK_TRN_EXPECTED_NEURON_DEVICES=16" in user_data
    assert "CDK_TRN_EXPECTED_EFA_DEVICES=8" in user_data


def test_every_resource_is_tagged_with_the_cluster_name(default_template):
    default_template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "Tags": Match.array_with(
                [Match.object_like({"Key": "cdk-trn:cluster", "PropagateAtLaunch": True})]
            )
        },
    )
    default_template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {"Tags": Match.array_with([Match.object_like({"Key": "cdk-trn:cluster"})])},
    )


def test_resource_count_does_not_depend_on_node_count():
    small, _ = cluster_stack(nodes=1)
    large, _ = cluster_stack(nodes=256)
    count = lambda stack: len(template_of(stack).to_json()["Resources"])  # noqa: E731
    assert count(small) == count(large)


@pytest.mark.parametrize("instance_type", sorted(INSTANCE_SPECS))
def test_cfn_lint_is_clean_for_every_catalog_type_in_a_region_offering_it(instance_type):
    stack, _ = cluster_stack(instance_type)
    region = PLACEMENTS[instance_type][0]
    assert lint_findings(template_of(stack).to_json(), region) == []


def test_a_deploy_never_replaces_running_nodes_by_default(default_template):
    (group,) = default_template.find_resources("AWS::AutoScaling::AutoScalingGroup").values()
    assert "UpdatePolicy" not in group


def test_opted_in_node_replacement_pauses_at_most_an_hour_and_suspends_healing():
    stack, _ = cluster_stack(replace_nodes_on_update=True, signal_timeout=cdk.Duration.hours(2))
    (group,) = template_of(stack).find_resources("AWS::AutoScaling::AutoScalingGroup").values()
    update = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert update["PauseTime"] == "PT1H" and update["MinInstancesInService"] == 0
    assert {"HealthCheck", "ReplaceUnhealthy"} <= set(update["SuspendProcesses"])
    assert group["CreationPolicy"]["ResourceSignal"]["Timeout"] == "PT2H"


def test_reservation_launches_into_the_placement_group_it_was_made_in():
    stack, _ = cluster_stack(
        capacity=Capacity.reservation("cr-0123456789abcdef0", placement_group_name="trn-pg")
    )
    template = template_of(stack)
    template.resource_count_is("AWS::EC2::PlacementGroup", 0)
    template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup", {"PlacementGroup": "trn-pg"}
    )


def test_reservation_without_a_group_gets_no_new_placement_group():
    stack, _ = cluster_stack(capacity=Capacity.reservation("cr-0123456789abcdef0"))
    template_of(stack).resource_count_is("AWS::EC2::PlacementGroup", 0)


def test_node_may_signal_only_its_own_stack(default_template):
    default_template.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": "cloudformation:SignalResource",
                                "Resource": {"Ref": "AWS::StackId"},
                            }
                        )
                    ]
                )
            }
        },
    )
