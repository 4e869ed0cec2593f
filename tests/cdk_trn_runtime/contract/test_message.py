"""The message base: what a construct sends is what the runtime parses, or a named error."""

import enum
from dataclasses import dataclass

import pytest

from cdk_trn_runtime.contract.message import Message, MessageError, key


@dataclass(frozen=True)
class Inner(Message):
    DESCRIPTION = "inner"
    name: str = key("Name")


@dataclass(frozen=True)
class Sample(Message):
    DESCRIPTION = "sample properties"
    nodes: int = key("Nodes")
    price: float | None = key("HourlyPrice", default=None)
    flag: bool = key("Flag", default=False)
    names: tuple[str, ...] = key("Names", default=())
    inner: tuple[Inner, ...] = key("Inner", default=())

    def validate(self) -> None:
        if self.nodes < 1:
            raise self.invalid("nodes", "at least 1")


def test_round_trip_through_cloudformation_strings():
    sent = Sample(nodes=4, price=1.5, flag=True, names=("a", "b"), inner=(Inner("x"),))
    wire = sent.to_properties()
    assert wire == {
        "Nodes": 4,
        "HourlyPrice": 1.5,
        "Flag": True,
        "Names": ["a", "b"],
        "Inner": [{"Name": "x"}],
    }
    # CloudFormation turns every scalar into a string on the way to the handler.
    as_cfn = {
        "Nodes": "4",
        "HourlyPrice": "1.5",
        "Flag": "true",
        "Names": ["a", "b"],
        "Inner": [{"Name": "x"}],
    }
    assert Sample.from_properties(as_cfn) == sent


def test_defaults_and_none_are_left_out_when_asked():
    assert Sample(nodes=2).to_properties(omit_defaults=True) == {"Nodes": 2}


@pytest.mark.parametrize(
    ("props", "says"),
    [
        ({}, "sample properties: Nodes is missing"),
        ({"Nodes": "many"}, "sample properties: Nodes 'many' is not valid"),
        ({"Nodes": "2", "Flag": "yes"}, "Flag 'yes' is not valid: expected true or false"),
        ({"Nodes": "2", "Names": "a,b"}, "Names 'a,b' is not valid: expected a list"),
        ({"Nodes": "0"}, "sample properties: Nodes 0 is not valid: at least 1"),
    ],
)
def test_a_bad_message_names_the_key_and_value(props, says):
    with pytest.raises(MessageError) as error:
        Sample.from_properties(props)
    assert says in str(error.value)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Boot(Message):
    DESCRIPTION = "boot variables"
    region: str = key("CDK_TRN_REGION")
    seconds: int = key("CDK_TRN_SECONDS")
    efa: bool = key("CDK_TRN_EFA", default=False)
    colour: Colour = key("CDK_TRN_COLOUR", default=Colour.RED)
    inner: Inner | None = key("CDK_TRN_INNER", default=None)
    socket: str | None = key("CDK_TRN_SOCKET", default=None, keep_none=True)


def test_environment_round_trip_in_declaration_order_with_the_shells_booleans():
    sent = Boot(region="us-east-2", seconds=900, efa=True, inner=Inner("x"))
    env = sent.to_environment()
    assert list(env.items()) == [
        ("CDK_TRN_REGION", "us-east-2"),
        ("CDK_TRN_SECONDS", "900"),
        ("CDK_TRN_EFA", "1"),
        ("CDK_TRN_COLOUR", "red"),
        ("CDK_TRN_INNER", '{"Name": "x"}'),
    ]
    assert Boot.from_environment({**env, "PATH": "/usr/bin"}) == sent


def test_a_bad_environment_names_the_variable():
    with pytest.raises(MessageError, match="boot variables: CDK_TRN_SECONDS 'soon' is not valid"):
        Boot.from_environment({"CDK_TRN_REGION": "r", "CDK_TRN_SECONDS": "soon"})
    with pytest.raises(MessageError, match="CDK_TRN_COLOUR 'green' is not valid: one of red, blue"):
        Boot.from_environment(
            {"CDK_TRN_REGION": "r", "CDK_TRN_SECONDS": "1", "CDK_TRN_COLOUR": "green"}
        )


def test_cloudformation_strings_keep_none_and_key_of():
    wire = Boot(region="r", seconds=5, efa=True).to_properties(strings=True)
    assert wire == {
        "CDK_TRN_REGION": "r",
        "CDK_TRN_SECONDS": "5",
        "CDK_TRN_EFA": "true",
        "CDK_TRN_COLOUR": "red",
        "CDK_TRN_SOCKET": None,
    }
    assert Boot.from_properties(wire) == Boot(region="r", seconds=5, efa=True)
    assert Boot.key_of("seconds") == "CDK_TRN_SECONDS"
    with pytest.raises(KeyError, match="boot variables has no field 'second'"):
        Boot.key_of("second")
