"""Crash-safe checkpoints: ``latest`` only ever names a complete file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from cdk_trn_runtime.train import checkpoint


def test_save_writes_the_file_then_points_latest_at_it(tmp_path: Path):
    path = checkpoint.save(tmp_path, 5, lambda f: f.write(b"five"))
    assert path == tmp_path / "step-00000005.pt"
    assert checkpoint.latest(tmp_path) == path
    assert path.read_bytes() == b"five"


def test_no_latest_before_the_first_checkpoint(tmp_path: Path):
    assert checkpoint.latest(tmp_path) is None


def test_a_crash_while_writing_leaves_the_previous_latest_and_no_temp_file(tmp_path: Path):
    good = checkpoint.save(tmp_path, 5, lambda f: f.write(b"five"))

    def crash(handle: BinaryIO) -> None:
        handle.write(b"half of ten")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 10, crash)
    assert checkpoint.latest(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005.pt"]


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path):
    for step in (2, 4, 6):
        checkpoint.save(tmp_path, step, lambda f: f.write(b"x"), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000004.pt",
        "step-00000006.pt",
    ]


def test_latest_naming_a_missing_file_is_an_error(tmp_path: Path):
    (tmp_path / "latest").write_text("step-00000009.pt\n")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.latest(tmp_path)


def test_settings_refuse_bad_steps():
    from cdk_trn_runtime.train.__main__ import settings

    with pytest.raises(ValueError, match="TRAIN_STEPS must be a positive integer"):
        settings({"TRAIN_STEPS": "0"})
    assert settings({"CDK_TRN_SHARED_ROOT": "/fsx"}).checkpoint_dir == Path(
        "/fsx/checkpoints/train"
    )


def test_settings_take_a_step_sleep_and_refuse_bad_ones():
    from cdk_trn_runtime.train.__main__ import settings

    assert settings({}).step_sleep == 0
    assert settings({"TRAIN_STEP_SLEEP": "1.5"}).step_sleep == 1.5
    for bad in ("-1", "soon", "61"):
        with pytest.raises(ValueError, match="TRAIN_STEP_SLEEP must be a number of seconds"):
            settings({"TRAIN_STEP_SLEEP": bad})
