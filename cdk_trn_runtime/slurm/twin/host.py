"""Small helpers on the machine that runs the twin: its log line, whether a process lives, atomic
file writes, polling with a deadline, and the clean environment daemons start in."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["CLEAN_PATH", "DEBIAN_PYTHON", "alive", "log", "wait_for", "write_file"]

#: What systemd gives a unit: no caller's SLURM_CONF, venv PATH or AWS settings.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PYTHON = "/usr/bin/python3"


def log(message: str) -> None:
    print(f"twin: {message}", file=sys.stderr, flush=True)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)
