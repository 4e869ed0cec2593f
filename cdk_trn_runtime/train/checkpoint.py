"""Crash-safe checkpoint files: a crash at any instant never leaves a ``latest`` that cannot be
loaded.

A checkpoint is written to a temporary file in its final directory, flushed and fsynced, then
renamed into place (``os.replace`` is atomic within a file system) and the directory fsynced.
Only then does ``latest`` (a one-line file naming the checkpoint) move, by the same
write-fsync-rename. Readers follow ``latest``; older checkpoints beyond ``keep`` are removed
after the pointer moved. Standard library only.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

LATEST = "latest"
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """The checkpoint ``latest`` names, when the pointer and the file exist."""
    try:
        name = (directory / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    if not _NAME.match(name):
        raise ValueError(f"{directory / LATEST} names {name!r}, not a checkpoint file")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory / LATEST} names {name}, which does not exist")
    return path


def save(directory: Path, step: int, write: Callable[[BinaryIO], object], keep: int = 2) -> Path:
    """Write the checkpoint of ``step``, then point ``latest`` at it; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(step)
    write_atomic(path, write)
    write_atomic(directory / LATEST, lambda handle: handle.write(f"{path.name}\n".encode()))
    steps = sorted(int(m.group(1)) for f in directory.iterdir() if (m := _NAME.match(f.name)))
    for old in steps[:-keep]:
        if old != step:
            (directory / checkpoint_name(old)).unlink(missing_ok=True)
    return path
