"""The Slurm cluster document as the controller's boot reads it (``CDK_TRN_SLURM_SPEC``, the JSON
the SlurmScheduler construct writes at synth).

``controller_bootstrap.sh`` runs this file as root from its root-only boot bundle with
``python3 -I <file>``: isolated (no ``PYTHON*`` variables, no user site, neither the working
directory nor this file's directory on ``sys.path``), so it imports the standard library only and
nothing a job could write. AL2023's ``python3`` is 3.9: no ``-P``, hence a file, not ``-m``.

    cluster_spec.py document <spec JSON> <controller host> <controller addr>
        the document with what only the instance knows (SlurmctldHost, SlurmctldAddr) on stdout
    cluster_spec.py get <spec JSON> <key> [default]
        one value of the document on stdout; absent: the default, or an error without one
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _spec(text: str) -> dict[str, Any]:
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ValueError(f"the cluster document is not a JSON object: {text[:80]!r}")
    return spec


def instance_document(spec_json: str, controller_host: str, controller_addr: str) -> str:
    """The cluster document with the controller's host name (``controller_host``, SlurmctldHost)
    and stable name (``controller_addr``, SlurmctldAddr), as slurm.conf's generator reads it."""
    spec = _spec(spec_json)
    spec.update(controller_host=controller_host, controller_addr=controller_addr)
    return json.dumps(spec, indent=2, sort_keys=True)


def value(spec_json: str, key: str, default: str | None = None) -> str:
    """The document's ``key`` as the shell reads it (a scalar as text); when absent (or null),
    ``default``, or KeyError without one."""
    found = _spec(spec_json).get(key)
    if found is None:
        if default is None:
            raise KeyError(f"the cluster document has no {key!r}")
        return default
    if isinstance(found, (dict, list)):
        raise ValueError(f"the cluster document's {key!r} is not a scalar")
    return str(found)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "document":
        print(instance_document(*argv[1:]))
        return 0
    if len(argv) in (3, 4) and argv[0] == "get":
        print(value(*argv[1:]))
        return 0
    usage = "usage: cluster_spec.py document <spec> <host> <addr> | get <spec> <key> [default]"
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
