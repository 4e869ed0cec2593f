"""UltraServer rank order: (server id, node id), as AWS's UltraServer init script orders hosts."""

from __future__ import annotations

import pytest

from cdk_trn_runtime.slurm import topology
from cdk_trn_runtime.slurm.topology import (
    TopologyError,
    UltraServerHost,
    order_hosts,
    parse_hosts,
    topology_env,
)

# Two UltraServers, listed in address order, which is not the topology order.
TABLE = """\
ip-10-64-0-5 bbbb000000000002 1
ip-10-64-0-6 aaaa000000000001 3
ip-10-64-0-7 bbbb000000000002 0
ip-10-64-0-8 aaaa000000000001 0
ip-10-64-0-9 aaaa000000000001 2
ip-10-64-0-10 aaaa000000000001 1
ip-10-64-0-11 bbbb000000000002 3
ip-10-64-0-12 bbbb000000000002 2
"""


def test_hosts_are_ordered_by_server_id_then_node_id_not_by_address():
    ordered = order_hosts(parse_hosts(TABLE), size=4)
    assert [(h.server_id[:4], h.node_id) for h in ordered] == [
        ("aaaa", 0), ("aaaa", 1), ("aaaa", 2), ("aaaa", 3),
        ("bbbb", 0), ("bbbb", 1), ("bbbb", 2), ("bbbb", 3),
    ]  # fmt: skip
    assert ordered[0].hostname == "ip-10-64-0-8"


def test_each_host_gets_its_topology_id_and_the_same_leader():
    ordered = order_hosts(parse_hosts(TABLE))
    assert topology_env(ordered, "ip-10-64-0-8") == {
        "NEURON_GLOBAL_TOPOID": "0",
        "NEURON_GLOBAL_TOPOID0_HOST": "ip-10-64-0-8",
    }
    assert topology_env(ordered, "ip-10-64-0-11")["NEURON_GLOBAL_TOPOID"] == "7"
    ids = {topology_env(ordered, h.hostname)["NEURON_GLOBAL_TOPOID"] for h in ordered}
    assert ids == {str(i) for i in range(8)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("a s1 0\na s1 1\n", "listed more than once"),
        ("a s1 0\nb s1 0\n", "share an UltraServer node id"),
        ("a 0000000000000000 0\n", "not in an UltraServer"),
        ("a s1 -1\n", "not in an UltraServer"),
        ("a s1\n", "expected '<hostname> <server id> <node id>'"),
        ("", "no hosts"),
    ],
)
def test_a_table_that_is_not_a_set_of_ultraserver_hosts_is_refused(table, message):
    with pytest.raises(TopologyError, match=message):
        order_hosts(parse_hosts(table))


def test_an_ultraserver_with_missing_hosts_is_refused_with_a_size():
    hosts = [UltraServerHost(f"h{i}", "s1", i) for i in range(3)]
    with pytest.raises(TopologyError, match="other than 4 hosts"):
        order_hosts(hosts, size=4)


def test_a_host_outside_the_allocation_gets_no_environment():
    with pytest.raises(TopologyError, match="not among"):
        topology_env(order_hosts(parse_hosts(TABLE)), "elsewhere")


def test_self_reports_the_node_ids_or_nothing_off_an_ultraserver():
    env = {"NEURON_RT_ULTRASERVER_SERVER_ID": "aaaa", "NEURON_RT_ULTRASERVER_NODE_ID": "2"}
    assert topology.self_line(env, "h1") == "h1 aaaa 2"
    assert topology.self_line({}, "h1") == ""


def test_command_line_prints_the_leader_and_this_hosts_environment(capsys):
    env = {topology.HOSTS_VARIABLE: TABLE, "SLURM_NNODES": "8"}
    assert topology.main(["leader"], env, "ip-10-64-0-6") == 0
    assert capsys.readouterr().out == "ip-10-64-0-8\n"
    assert topology.main(["env"], env, "ip-10-64-0-6") == 0
    out = capsys.readouterr().out
    assert out == "NEURON_GLOBAL_TOPOID=3\nNEURON_GLOBAL_TOPOID0_HOST=ip-10-64-0-8\n"


def test_command_line_refuses_a_table_missing_a_node_of_the_job(capsys):
    env = {topology.HOSTS_VARIABLE: TABLE, "SLURM_NNODES": "9"}
    assert topology.main(["leader"], env, "h") == 1
    assert "8 hosts reported their UltraServer ids, not 9" in capsys.readouterr().err


def test_self_reads_the_node_env_file(tmp_path, monkeypatch, capsys):
    env_file = tmp_path / "slurm-node.env"
    env_file.write_text("NEURON_RT_ULTRASERVER_SERVER_ID=cccc\nNEURON_RT_ULTRASERVER_NODE_ID=1\n")
    monkeypatch.setattr(topology, "NODE_ENV_FILE", str(env_file))
    assert topology.main(["self"], {}, "h7") == 0
    assert capsys.readouterr().out == "h7 cccc 1\n"
