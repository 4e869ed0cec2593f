"""Device choice, process placement and the compile-cache layout (no torch needed)."""

import pytest

from cdk_trn_runtime.suite import compile_cache
from cdk_trn_runtime.suite.device import choose_platform, process_info, standalone_environment


def test_pjrt_device_cpu_chooses_cpu_in_any_case():
    env = {"PJRT_DEVICE": "cpu"}
    assert choose_platform(env) == "CPU"
    assert env["PJRT_DEVICE"] == "CPU"


def test_pjrt_device_neuron_chooses_neuron():
    assert choose_platform({"PJRT_DEVICE": "NEURON"}) == "NEURON"


def test_unknown_pjrt_device_is_rejected():
    with pytest.raises(ValueError, match="PJRT_DEVICE must be one of NEURON, CPU, got TPU"):
        choose_platform({"PJRT_DEVICE": "TPU"})


def test_without_pjrt_device_and_without_torch_neuronx_chooses_cpu():
    env: dict[str, str] = {}
    assert choose_platform(env) == "CPU"
    assert env["PJRT_DEVICE"] == "CPU"


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
    env = standalone_environment(info, "NEURON")
    assert not {"RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"} & set(env)
    assert env["NEURON_RT_VISIBLE_CORES"] == "1"


def test_xla_cache_is_on_for_cpu_and_off_for_neuron_by_default():
    assert compile_cache.xla_cache_enabled("auto", "CPU") is True
    assert compile_cache.xla_cache_enabled("auto", "NEURON") is False


def test_neuron_cache_lives_under_the_cache_dir(tmp_path):
    paths = compile_cache.cache_paths(str(tmp_path), "NEURON", "auto")
    assert paths["neuron"] == str(tmp_path / "neuron")
    assert paths["xla"] is None


def test_remote_neuron_cache_cannot_be_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "s3://bucket/cache")
    assert (
        compile_cache.countable(compile_cache.cache_paths(str(tmp_path), "NEURON", "auto")) is False
    )


def test_new_cache_files_are_counted_and_lock_files_are_not(tmp_path):
    paths = compile_cache.cache_paths(str(tmp_path), "CPU", "auto")
    compile_cache.configure_environment(paths)
    before = compile_cache.entries(paths)
    (tmp_path / "xla" / "1234").write_bytes(b"x")
    (tmp_path / "xla" / "5678.lock").write_bytes(b"")
    assert compile_cache.entries(paths) - before == {str(tmp_path / "xla" / "1234")}
