"""The harness's rendezvous port ranges: two local clusters on one host, in one process or two,
never hold the same range, and a range is free again once its holder is gone."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from cdk_trn_runtime import contract
from tests.cdk_trn_runtime.slurm.twin.harness import PORTS_PER_CLUSTER, claimed_ports

REPO = Path(__file__).resolve().parents[4]


def test_two_clusters_in_one_process_get_disjoint_ranges_within_the_rendezvous_ports(tmp_path):
    low, high = contract.RENDEZVOUS_PORTS
    with claimed_ports(tmp_path) as first, claimed_ports(tmp_path) as second:
        assert len(first) == len(second) == PORTS_PER_CLUSTER
        assert not set(first) & set(second)
        assert low <= min(first) and max(second) <= high
    with claimed_ports(tmp_path) as again:
        assert again == first


def test_a_range_held_by_another_process_is_skipped_until_it_ends(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from tests.cdk_trn_runtime.slurm.twin.harness import claimed_ports\n"
            f"with claimed_ports(__import__('pathlib').Path({str(tmp_path)!r})) as ports:\n"
            "    print(ports.start, flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        held = int(holder.stdout.readline())
        with claimed_ports(tmp_path) as mine:
            assert held not in mine
    finally:
        if holder.stdin:
            holder.stdin.close()
        holder.wait(timeout=30)
    with claimed_ports(tmp_path) as mine:
        assert mine.start == held


def test_no_free_range_is_an_error(tmp_path):
    low, high = contract.RENDEZVOUS_PORTS
    with ExitStack() as stack:
        for _ in range((high - low + 1) // PORTS_PER_CLUSTER):
            stack.enter_context(claimed_ports(tmp_path))
        with pytest.raises(AssertionError, match="every rendezvous port range"):
            stack.enter_context(claimed_ports(tmp_path))
