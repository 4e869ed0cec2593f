"""Device choice, process placement and the compile-cache layout (no torch needed)."""

import pytest

from cdk_trn_runtime.suite import compile_cache
from cdk_trn_runtime.suite.device import (
    BACKENDS,
    COMPILE_BACKENDS,
    choose_device,
    process_info,
    resolve_device,
    standalone_environment,
)


@pytest.mark.parametrize(
    ("accelerator", "device"), [("neuron", "neuron"), ("cuda", "cuda"), (None, "cpu")]
)
def test_without_a_request_the_accelerator_decides(accelerator, device):
    assert resolve_device(None, accelerator) == device


def test_an_accelerator_the_suite_does_not_know_falls_back_to_cpu():
    assert resolve_device(None, "mps") == "cpu"


def test_an_explicit_device_wins_over_the_accelerator_in_any_case():
    assert resolve_device("CPU", "neuron") == "cpu"


def test_device_from_the_environment_needs_no_torch():
    assert choose_device(None, {"CDK_TRN_DEVICE": "neuron"}) == "neuron"
    assert choose_device("cpu", {"CDK_TRN_DEVICE": "neuron"}) == "cpu"


def test_unknown_device_is_rejected_naming_the_choices():
    with pytest.raises(ValueError, match="device must be one of neuron, cuda, cpu, got 'tpu'"):
        resolve_device("tpu", None)


def test_each_device_takes_its_own_process_group_and_compile_backend():
    assert BACKENDS == {"neuron": "neuron", "cuda": "nccl", "cpu": "gloo"}
    assert COMPILE_BACKENDS["neuron"] == "neuron"
    assert COMPILE_BACKENDS["cpu"] == "inductor"


def test_torchrun_variables_place_the_process():
    info = process_info(
        {
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "TRN_ACCEPTANCE_NODE": "i-0abc",
        }
    )
    assert (info.rank, info.world_size, info.local_rank, info.node) == (5, 8, 1, "i-0abc")


def test_rank_outside_world_is_rejected():
    with pytest.raises(ValueError, match="RANK"):
        process_info({"RANK": "2", "WORLD_SIZE": "2"})


def test_warm_pass_environment_leaves_the_torchrun_job_and_keeps_its_core(monkeypatch):
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES", raising=False)
    info = process_info({"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1"})
    env = standalone_environment(info, "neuron")
    assert not {"RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"} & set(env)
    assert env["NEURON_RT_VISIBLE_CORES"] == "1"
    assert env["CDK_TRN_DEVICE"] == "neuron"


def test_neuron_cache_and_inductor_cache_live_under_the_cache_dir(tmp_path):
    paths = compile_cache.cache_paths(str(tmp_path), "neuron")
    assert paths["neuron"] == str(tmp_path / "neuron")
    assert paths["inductor"] == str(tmp_path / "inductor")
    assert compile_cache.cache_paths(str(tmp_path), "cpu")["neuron"] is None


def test_the_inductor_cache_is_pointed_at_the_shared_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    compile_cache.configure_environment(compile_cache.cache_paths(str(tmp_path), "cpu"))
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")


def test_remote_neuron_cache_cannot_be_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "s3://bucket/cache")
    assert compile_cache.countable(compile_cache.cache_paths(str(tmp_path), "neuron")) is False


def test_new_graph_entries_are_counted_and_lock_files_and_build_products_are_not(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    paths = compile_cache.cache_paths(str(tmp_path), "cpu")
    compile_cache.configure_environment(paths)
    before = compile_cache.entries(paths)
    graph = tmp_path / "inductor" / "fxgraph" / "ab" / "key"
    graph.mkdir(parents=True)
    (graph / "entry").write_bytes(b"x")
    (graph / "entry.lock").write_bytes(b"")
    (tmp_path / "inductor" / "kernel.so").write_bytes(b"")
    assert compile_cache.entries(paths) - before == {str(graph / "entry")}


def test_hit_rate_is_hits_over_lookups_and_none_without_lookups():
    assert compile_cache.hit_rate(3, 1) == 0.75
    assert compile_cache.hit_rate(0, 0) is None
