"""AL2023's system ``python3`` (3.9) for the tests of the modules the hosts run with it.

The vault host and the controller run some runtime modules with the distribution's ``python3``,
which is 3.9 on Amazon Linux 2023 (the vault's key-state write with ``python3-botocore``). The
tests run them with a real 3.9: ``.venv-host39``, a venv of pyenv's 3.9 (part of this machine
kind's image) with botocore, which ``make unit`` creates (``make host-python``). Without it a
test fails in CI and is skipped elsewhere, naming the target.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST_PYTHON = REPO / ".venv-host39" / "bin" / "python"
HOST_VERSION = (3, 9)


def host_python() -> str:
    """The 3.9 interpreter (with botocore), checked to be 3.9."""
    if not HOST_PYTHON.exists():
        message = f"no {HOST_PYTHON}: `make host-python` creates it (pyenv's 3.9 with botocore)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    version = subprocess.run(
        [str(HOST_PYTHON), "-I", "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tuple(map(int, version)) == HOST_VERSION, version
    return str(HOST_PYTHON)
