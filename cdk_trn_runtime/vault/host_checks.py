"""What the vault host's boot (``host_bootstrap.sh``) reads out of ``nitro-cli``'s JSON and the
key state, as functions.

The boot runs this file as root from its root-only bundle with AL2023's system ``python3 -I
<file> ...`` (3.9, so this module stays 3.9 compatible): isolated (no ``PYTHON*`` variables, no
user site, neither the working directory nor this file's directory on ``sys.path``), so it
imports the standard library only.

    host_checks.py pcr0 <describe-eif JSON file> <expected PCR0>
        prints the image's PCR0; exit 1 when it is not the expected one
    host_checks.py enclave <describe-enclaves JSON file> <enclave name>
        prints the enclaves of that name; exit 1 unless exactly one RUNNING without debug flags
    host_checks.py public-key-pem <key state JSON file>
        the key state's public key (DER, base64) as PEM on stdout
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from pathlib import Path
from typing import Any


def eif_pcr0(measurements: dict[str, Any]) -> str:
    """PCR0 (lower-case hex) of ``nitro-cli describe-eif``'s output."""
    return str(measurements["Measurements"]["PCR0"]).lower()


def named_enclaves(enclaves: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The enclaves of ``nitro-cli describe-enclaves``'s output named ``name``."""
    return [e for e in enclaves if e.get("EnclaveName") == name]


def runs_in_production(enclaves: list[dict[str, Any]]) -> bool:
    """Exactly one enclave, RUNNING, without debug flags (``Flags`` ``NONE``: its attestation
    carries the real PCRs)."""
    return (
        len(enclaves) == 1
        and enclaves[0].get("State") == "RUNNING"
        and enclaves[0].get("Flags") == "NONE"
    )


def public_key_pem(state: dict[str, Any]) -> str:
    """The key state's ``public_key`` (base64 of DER SubjectPublicKeyInfo) as a PEM block."""
    der = base64.b64decode(state["public_key"], validate=True)
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def _json(path: str) -> Any:
    return json.loads(Path(path).read_text())


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pcr0":
        found = eif_pcr0(_json(argv[1]))
        print(f"EIF PCR0 {found}")
        return 0 if found == argv[2].lower() else 1
    if len(argv) == 3 and argv[0] == "enclave":
        enclaves = named_enclaves(_json(argv[1]), argv[2])
        print(json.dumps(enclaves))
        return 0 if runs_in_production(enclaves) else 1
    if len(argv) == 2 and argv[0] == "public-key-pem":
        sys.stdout.write(public_key_pem(_json(argv[1])))
        return 0
    print(
        "usage: host_checks.py pcr0 <file> <pcr0> | enclave <file> <name> | public-key-pem <file>",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
