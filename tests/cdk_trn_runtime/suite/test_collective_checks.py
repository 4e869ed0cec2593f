"""The collectives check notices wrong results (with a test double of the transport)."""

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from cdk_trn_runtime.suite import checks  # noqa: E402
from cdk_trn_runtime.suite.device import Collectives  # noqa: E402

pytestmark = pytest.mark.torch


class SingleRankCollectivesDouble(Collectives):
    """Host tensors, one rank; ``corrupt`` adds an error to every result."""

    def __init__(self, corrupt: float = 0.0) -> None:
        super().__init__("test-double", rank=0, world_size=1, tensor_device=torch.device("cpu"))
        self.corrupt = corrupt

    def all_reduce_sum(self, tensor):
        return tensor.clone() + self.corrupt

    def all_gather(self, tensor):
        return tensor.clone() + self.corrupt

    def barrier(self):
        pass


def _runtime(collectives):
    return SimpleNamespace(collectives=collectives)


def test_correct_transport_passes_both_operations():
    entries = checks.collectives(_runtime(SingleRankCollectivesDouble()), [4096], 1)
    assert [(e["op"], e["correct"]) for e in entries] == [
        ("all_reduce", True),
        ("all_gather", True),
    ]


def test_wrong_values_are_reported_with_their_error():
    entries = checks.collectives(_runtime(SingleRankCollectivesDouble(corrupt=0.5)), [4096], 1)
    assert all(not e["correct"] and e["max_abs_error"] == 0.5 for e in entries)


def test_gathered_bytes_come_back_per_rank():
    assert SingleRankCollectivesDouble().all_gather_bytes(b'{"rank": 0}') == [b'{"rank": 0}']
