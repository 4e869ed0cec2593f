"""Command-line parsing and the report command, which need no torch."""

import argparse
import json
import subprocess
import sys

import pytest

from cdk_trn_runtime.suite.cli import build_parser, main, parse_size, parse_size_list
from cdk_trn_runtime.suite.summary import build_summary
from cdk_trn_runtime.suite.thresholds import Thresholds

from .rank_results import rank_result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("64K", 65536),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("256mb", 256 << 20),
    ],
)
def test_sizes_use_binary_units(text, expected):
    assert parse_size(text) == expected


def test_default_collective_sizes_span_1_mib_to_1_gib():
    args = build_parser().parse_args(["run", "--out-dir", "o", "--run-id", "r"])
    assert min(args.collective_sizes) == 1 << 20
    assert max(args.collective_sizes) == 1 << 30


def test_size_list_parses_each_entry():
    assert parse_size_list("1M,16M,1G") == (1 << 20, 16 << 20, 1 << 30)


@pytest.mark.parametrize("text", ["", "1T", "-1M", "0", "fast"])
def test_bad_size_is_rejected(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_run_requires_run_id():
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--out-dir", "o"])
    assert exit_info.value.code == 2


def test_fraction_above_one_exits_with_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--out-dir", str(tmp_path), "--run-id", "r", "--min-gemm-fraction", "2"])
    assert exit_info.value.code == 2
    assert "min_gemm_fraction" in capsys.readouterr().err


def test_report_of_failed_summary_exits_1_and_prints_the_failure(tmp_path, capsys):
    slow = rank_result()
    for entry in slow["gemm"]:
        entry["tflops"] = 10.0
    summary = build_summary([slow], Thresholds(peak_bf16_tflops=166.75), run_id="r", world_size=1)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    assert main(["report", str(path)]) == 1
    assert "[gemm_fraction_of_peak]" in capsys.readouterr().out


def test_help_works_without_importing_torch():
    code = (
        "import sys\n"
        "from cdk_trn_runtime.suite.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
