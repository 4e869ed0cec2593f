"""Crash-safe checkpoints: a crash at any instant never leaves a ``latest`` that cannot be
loaded.

A checkpoint is a directory, ``step-<8 digits>/``, so that it can hold any number of files
(``state.pt`` here; one shard per rank in sharded formats) and a signed manifest can list them
(``cdk_trn_runtime.provenance``; the manifest sits beside it as ``step-<8 digits>.manifest.json``).
It is filled in a temporary directory beside its final place, every file and the directory are
fsynced, then the directory is renamed into place (``rename`` is atomic within a file system) and
the parent fsynced. Only then does ``latest`` (a one-line file naming the checkpoint) move, by a
write-fsync-rename of its own: that rename is the commit. Readers follow ``latest``; checkpoints
beyond ``keep`` (and their manifests) are removed after the pointer moved.

``before_commit`` sees the staged directory, complete and fsynced, just before its rename: the
training entry point hashes the files it just wrote there, so what it signs later is what this
process wrote, never what the shared directory holds at signing time.

A crash mid-save leaves its staging directory (``.step-<N>.<random>.tmp``, or ``.old`` while a
step is replaced) behind; :func:`remove_stale_staging` deletes those, and only those, at start-up.
Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

LATEST = "latest"
#: The file :func:`save` writes into a checkpoint directory.
STATE_FILE = "state.pt"
#: What a signed manifest beside a checkpoint is called (``provenance sign``'s default too).
MANIFEST_SUFFIX = ".manifest.json"
_NAME = re.compile(r"^step-(\d{8})$")
#: What :func:`save_directory` stages in (``mkdtemp`` names): never a committed checkpoint.
_STAGING = re.compile(r"^\.step-\d{8}\.[A-Za-z0-9_]+\.(tmp|old)$")
#: Checkpoints of earlier versions were single files; ``latest`` may still name one.
_FILE_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint path names, or None when it is not a checkpoint's name."""
    match = _NAME.match(path.name) or _FILE_NAME.match(path.name)
    return int(match.group(1)) if match else None


def manifest_path(checkpoint: Path) -> Path:
    """Where the signed manifest of ``checkpoint`` lives: beside it, never inside it."""
    return checkpoint.with_name(checkpoint.name + MANIFEST_SUFFIX)


def state_file(checkpoint: Path) -> Path:
    """The file :func:`save` wrote in ``checkpoint`` (the file itself for old single files)."""
    return checkpoint if checkpoint.is_file() else checkpoint / STATE_FILE


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(directory))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Make ``path`` hold what ``write`` writes, completely or not at all."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def latest(directory: Path) -> Path | None:
    """The checkpoint ``latest`` names, when the pointer and the checkpoint exist."""
    try:
        name = (directory / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    if not (_NAME.match(name) or _FILE_NAME.match(name)):
        raise ValueError(f"{directory / LATEST} names {name!r}, not a checkpoint")
    path = directory / name
    if not (path.is_dir() if _NAME.match(name) else path.is_file()):
        raise FileNotFoundError(f"{directory / LATEST} names {name}, which does not exist")
    return path


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoint directories under ``directory``, oldest step first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def remove_stale_staging(directory: Path) -> list[Path]:
    """Delete the staging directories an aborted save left in ``directory`` (``.step-<N>.*.tmp``
    and ``.step-<N>.*.old``); never a committed ``step-<N>``, a file or a link. Call it once at
    start-up, from the one process that saves, before it saves: a save in flight elsewhere in the
    same directory would lose its staging. Returns what was removed."""
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if _STAGING.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(entry)
    if removed:
        _fsync_directory(directory)
    return removed


def save_directory(
    directory: Path,
    step: int,
    fill: Callable[[Path], object],
    keep: int = 2,
    *,
    before_commit: Callable[[Path, Path], object] | None = None,
    owned: list[Path] | None = None,
) -> Path:
    """Commit the checkpoint of ``step``: ``fill`` writes its files into the (temporary)
    directory it is given; then it moves into place and ``latest`` points at it. Keeps the
    newest ``keep`` checkpoints. Returns the committed checkpoint directory.

    ``owned``: the checkpoints this run committed (the caller's list, which this appends to);
    when given, the retention removes only those, never one another job put in the directory
    (a planted ``step-99999999`` would otherwise count as the newest and push this run's out).

    ``before_commit(staging, final)`` runs once the staged files are complete and fsynced, just
    before the rename; if it raises, nothing is committed."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory))
    try:
        fill(staging)
        _fsync_tree(staging)
        if before_commit is not None:
            before_commit(staging, final)
        if final.exists():
            # The same step again (a run restarted from an older checkpoint): the old copy and
            # its manifest go; ``latest`` never names it here, as a resumed run saves later steps.
            if latest(directory) == final:
                raise FileExistsError(f"{final} is the latest checkpoint; it is not overwritten")
            manifest_path(final).unlink(missing_ok=True)
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=directory))
            os.replace(final, old / final.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_directory(directory)
    write_atomic(directory / LATEST, lambda handle: handle.write(f"{final.name}\n".encode()))
    candidates = checkpoints(directory)
    if owned is not None:
        owned.append(final)
        mine = {p.resolve() for p in owned}
        candidates = [p for p in candidates if p.resolve() in mine]
    for old_checkpoint in candidates[:-keep]:
        if old_checkpoint != final:
            manifest_path(old_checkpoint).unlink(missing_ok=True)
            shutil.rmtree(old_checkpoint, ignore_errors=True)
            if owned is not None:
                owned[:] = [p for p in owned if p.resolve() != old_checkpoint.resolve()]
    return final


def save(
    directory: Path,
    step: int,
    write: Callable[[BinaryIO], object],
    keep: int = 2,
    *,
    before_commit: Callable[[Path, Path], object] | None = None,
    owned: list[Path] | None = None,
) -> Path:
    """Commit a checkpoint of one file, ``state.pt``, holding what ``write`` writes."""

    def fill(staging: Path) -> None:
        with (staging / STATE_FILE).open("wb") as handle:
            write(handle)

    return save_directory(directory, step, fill, keep, before_commit=before_commit, owned=owned)
