"""Crash-safe checkpoints: ``latest`` only ever names a complete checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from cdk_trn_runtime.train import checkpoint


def test_save_writes_the_directory_then_points_latest_at_it(tmp_path: Path):
    path = checkpoint.save(tmp_path, 5, lambda f: f.write(b"five"))
    assert path == tmp_path / "step-00000005"
    assert checkpoint.latest(tmp_path) == path
    assert (tmp_path / "latest").read_text() == "step-00000005\n"
    assert sorted(p.name for p in path.iterdir()) == ["state.pt"]
    assert checkpoint.state_file(path).read_bytes() == b"five"


def test_a_checkpoint_of_several_files_is_committed_whole(tmp_path: Path):
    def fill(staging: Path) -> None:
        (staging / "shards").mkdir()
        for rank in range(3):
            (staging / "shards" / f"rank-{rank}.pt").write_bytes(bytes([rank]) * 10)

    path = checkpoint.save_directory(tmp_path, 7, fill)
    assert checkpoint.latest(tmp_path) == path
    assert sorted(p.name for p in (path / "shards").iterdir()) == [
        "rank-0.pt",
        "rank-1.pt",
        "rank-2.pt",
    ]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]


def test_only_the_newest_checkpoints_and_their_manifests_are_kept(tmp_path: Path):
    for step in (2, 4, 6):
        path = checkpoint.save(tmp_path, step, lambda f: f.write(b"x"), keep=2)
        checkpoint.manifest_path(path).write_text("{}")
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000004",
        "step-00000004.manifest.json",
        "step-00000006",
        "step-00000006.manifest.json",
    ]


def test_saving_a_step_again_replaces_it_and_drops_its_stale_manifest(tmp_path: Path):
    checkpoint.save(tmp_path, 2, lambda f: f.write(b"first"))
    again = checkpoint.save(tmp_path, 4, lambda f: f.write(b"four"))
    (tmp_path / "step-00000002.manifest.json").write_text("{}")
    (tmp_path / "latest").write_text("step-00000002\n")  # a run resumed from step 2
    path = checkpoint.save(tmp_path, 4, lambda f: f.write(b"four again"))
    assert path == again
    assert checkpoint.state_file(path).read_bytes() == b"four again"
    assert not checkpoint.manifest_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_latest_checkpoint_is_never_overwritten(tmp_path: Path):
    checkpoint.save(tmp_path, 4, lambda f: f.write(b"four"))
    with pytest.raises(FileExistsError, match="latest checkpoint"):
        checkpoint.save(tmp_path, 4, lambda f: f.write(b"other"))
    assert checkpoint.state_file(tmp_path / "step-00000004").read_bytes() == b"four"


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path: Path):
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.latest(tmp_path)


def test_latest_may_name_a_single_file_checkpoint_of_earlier_versions(tmp_path: Path):
    (tmp_path / "step-00000003.pt").write_bytes(b"old")
    (tmp_path / "latest").write_text("step-00000003.pt\n")
    path = checkpoint.latest(tmp_path)
    assert path == tmp_path / "step-00000003.pt"
    assert checkpoint.state_file(path).read_bytes() == b"old"


def test_settings_refuse_bad_steps():
    from cdk_trn_runtime.train.__main__ import settings

    with pytest.raises(ValueError, match="TRAIN_STEPS must be a positive integer"):
        settings({"TRAIN_STEPS": "0"})
    assert settings({"CDK_TRN_SHARED_ROOT": "/fsx"}).checkpoint_dir == Path(
        "/fsx/checkpoints/train"
    )


def test_a_job_s_default_checkpoint_directory_is_its_own():
    """A requeue (same job id) resumes there; a new submission (a new id) starts fresh."""
    from cdk_trn_runtime.train.__main__ import settings

    job = {"CDK_TRN_SHARED_ROOT": "/fsx", "SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "train"}
    assert settings(job).checkpoint_dir == Path("/fsx/checkpoints/train-41")
    assert settings({**job, "SLURM_JOB_ID": "42"}).checkpoint_dir != settings(job).checkpoint_dir
    assert settings({**job, "CHECKPOINT_DIR": "/fsx/mine"}).checkpoint_dir == Path("/fsx/mine")


def test_settings_take_a_step_sleep_and_refuse_bad_ones():
    from cdk_trn_runtime.train.__main__ import settings

    assert settings({}).step_sleep == 0
    assert settings({"TRAIN_STEP_SLEEP": "1.5"}).step_sleep == 1.5
    for bad in ("-1", "soon", "61"):
        with pytest.raises(ValueError, match="TRAIN_STEP_SLEEP must be a number of seconds"):
            settings({"TRAIN_STEP_SLEEP": bad})


def test_stale_staging_directories_are_removed_and_nothing_else(tmp_path: Path):
    kept = checkpoint.save(tmp_path, 4, lambda f: f.write(b"four"))
    checkpoint.manifest_path(kept).write_text("{}")
    # What saves killed mid-way leave: a half-filled staging directory, a replaced step's copy.
    (tmp_path / ".step-00000006.k2j_x9ab.tmp").mkdir()
    (tmp_path / ".step-00000006.k2j_x9ab.tmp" / "state.pt").write_bytes(b"half")
    (tmp_path / ".step-00000002.q1w2e3r4.old" / "step-00000002").mkdir(parents=True)
    # Not staging: a committed step, a file and a link with staging-like names, others' files.
    (tmp_path / ".step-00000008.abcdefgh.tmp").write_bytes(b"a file")
    (tmp_path / ".step-00000009.abcdefgh.tmp").symlink_to(kept)
    (tmp_path / ".latest.abcdefgh.tmp").write_bytes(b"step-00000004\n")
    (tmp_path / "notes.tmp").mkdir()

    removed = checkpoint.remove_stale_staging(tmp_path)

    assert [p.name for p in removed] == [
        ".step-00000002.q1w2e3r4.old",
        ".step-00000006.k2j_x9ab.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".latest.abcdefgh.tmp",
        ".step-00000008.abcdefgh.tmp",
        ".step-00000009.abcdefgh.tmp",
        "latest",
        "notes.tmp",
        "step-00000004",
        "step-00000004.manifest.json",
    ]
    assert checkpoint.latest(tmp_path) == kept
    assert checkpoint.state_file(kept).read_bytes() == b"four"
    assert checkpoint.remove_stale_staging(tmp_path / "absent") == []


def test_a_save_killed_before_its_rename_leaves_staging_that_start_up_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    good = checkpoint.save(tmp_path, 5, lambda f: f.write(b"five"))

    def killed(staging: Path, final: Path) -> None:
        raise SystemExit  # killed just before the rename

    with monkeypatch.context() as sigkill:
        sigkill.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)  # no cleanup runs
        with pytest.raises(SystemExit):
            checkpoint.save(tmp_path, 10, lambda f: f.write(b"ten"), before_commit=killed)
    (staged,) = [p for p in tmp_path.iterdir() if p.name.startswith(".step-00000010.")]
    assert checkpoint.latest(tmp_path) == good

    assert checkpoint.remove_stale_staging(tmp_path) == [staged]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]
    assert checkpoint.latest(tmp_path) == good


def test_before_commit_sees_the_complete_staged_files_before_the_rename(tmp_path: Path):
    seen: list[tuple[str, bytes, str | None]] = []

    def measure(staging: Path, final: Path) -> None:
        latest = checkpoint.latest(tmp_path)
        seen.append((final.name, (staging / "state.pt").read_bytes(), latest and latest.name))
        assert not final.exists()

    checkpoint.save(tmp_path, 2, lambda f: f.write(b"two"))
    path = checkpoint.save(tmp_path, 4, lambda f: f.write(b"four"), before_commit=measure)
    assert seen == [("step-00000004", b"four", "step-00000002")]
    assert checkpoint.latest(tmp_path) == path


def test_a_failing_before_commit_commits_nothing(tmp_path: Path):
    good = checkpoint.save(tmp_path, 2, lambda f: f.write(b"two"))

    def refuse(staging: Path, final: Path) -> None:
        raise OSError("cannot hash")

    with pytest.raises(OSError, match="cannot hash"):
        checkpoint.save(tmp_path, 4, lambda f: f.write(b"four"), before_commit=refuse)
    assert checkpoint.latest(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000002"]
