"""The manifest the signing agent signs: computed by a child process that runs as the caller's
uid (root never opens what a job points it at), then checked for shape and given the identity the
agent derived itself (a child naming another identity is refused).

The child is ``python -m cdk_trn_runtime.provenance.agent manifest``, started by
:func:`hash_as`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdk_trn_runtime.provenance.agent_client import AgentError
from cdk_trn_runtime.provenance.manifest import FORMAT, ManifestError, build_manifest

__all__ = ["hash_as", "manifest_child", "trusted_manifest"]

#: The directory holding this package (cdk_trn_runtime), for the manifest child's imports.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def hash_as(
    uid: int,
    gid: int,
    directory: str,
    identity: Mapping[str, Any],
    python: str | None = None,
) -> dict[str, Any]:
    """The manifest of ``directory``, computed by a child running as ``uid``:``gid`` (what the
    caller can read, and nothing root alone could). ``python``: an interpreter that uid may run
    (default: this one; ``$CDK_TRN_AGENT_PYTHON``)."""
    python = python or os.environ.get("CDK_TRN_AGENT_PYTHON") or sys.executable
    # -s and PYTHONNOUSERSITE: no usercustomize.py from the job's home; -P: nothing from the
    # working directory; a clean environment whose PYTHONPATH is where this package was loaded
    # from (root's: /opt/cdk-trn in the image), whatever the agent's own environment held. -I
    # would also drop that PYTHONPATH. The child's output is not trusted anyway: the agent
    # sets the identity itself (trusted_manifest).
    argv = [python, "-s", "-P", "-m", "cdk_trn_runtime.provenance.agent", "manifest"]
    done = subprocess.run(
        argv,
        input=json.dumps({"directory": directory, **identity}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=[],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(_PACKAGE_PARENT),
            "PYTHONNOUSERSITE": "1",
        },
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise AgentError(lines[-1] if lines else f"the manifest child exited {done.returncode}")
    manifest: dict[str, Any] = json.loads(done.stdout)
    return manifest


_SHA384 = re.compile(r"^[0-9a-f]{96}$")


def trusted_manifest(child: Any, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest the agent signs: the file list the child (a process of the job's uid, which
    the job can tamper with) reported, checked for shape, and the identity the agent derived
    from Slurm and the request, set here. A child that names another identity is refused."""
    if not isinstance(child, dict) or child.get("format") != FORMAT:
        raise AgentError("the manifest child answered something that is not a manifest")
    for name, want in identity.items():
        if child.get(name) != want:
            raise AgentError(
                f"the manifest child claims {name}={child.get(name)!r}, not {want!r}: refused"
            )
    entries = child.get("files")
    if not isinstance(entries, list):
        raise AgentError("the manifest child answered no file list")
    files = []
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"path", "sha384", "size"}
            or not isinstance(entry["path"], str)
            or not isinstance(entry["sha384"], str)
            or not _SHA384.match(entry["sha384"])
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
        ):
            raise AgentError(f"the manifest child answered a bad file entry: {entry!r}")
        files.append({"path": entry["path"], "sha384": entry["sha384"], "size": entry["size"]})
    created = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"format": FORMAT, **identity, "created": created, "files": files}


def manifest_child() -> int:
    """``agent manifest``: the child :func:`hash_as` starts (already as the caller's uid)."""
    request = json.loads(sys.stdin.read())
    directory = request.pop("directory")
    try:
        manifest = build_manifest(directory, **request)
    except ManifestError as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(manifest))
    return 0
