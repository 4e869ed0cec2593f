"""The message base: what a construct sends is what the runtime parses, or a named error."""

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
