"""The contract for shell scripts: ``contract.sh``, rendered from :mod:`cdk_trn_runtime.contract`.

Every public constant of the contract whose value a shell can hold becomes one ``readonly`` line
of ``contract.sh`` (beside this module), named ``CONTRACT_<NAME>``: a string or an integer as a
single-quoted word, a tuple of them as an indexed array, a dict of them as an associative array.
Anything else (functions, nested values) is left out. The prefix keeps the names apart from the
environment Slurm and the boot pass to the scripts (``SLURM_JOB_USER`` is a job's, not the
contract's).

The file is committed so that every place that ships ``cdk_trn_runtime/contract/`` (the boot
bundles, the training image, every asset) carries it; a test checks it equals :func:`render`.
Regenerate it with ``python -m cdk_trn_runtime.contract.shell``. Scripts source it as
``. <dir>/contract.sh`` (bash only); sourcing it twice in one shell is harmless.

Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

#: The rendered file, beside this module.
CONTRACT_SH = Path(__file__).with_name("contract.sh")
#: The prefix of every name in ``contract.sh``.
PREFIX = "CONTRACT_"
#: Marks a shell that has sourced the file: readonly, so the environment cannot fake it (an
#: environment variable never carries the readonly attribute, and the guard runs no command).
_LOADED = f"{PREFIX}SH_LOADED"


def quote(value: str | int) -> str:
    """``value`` as one single-quoted shell word. Refuses a newline (one constant, one line),
    a bool (no shell spelling) and anything but a string or an integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"no shell word for {value!r}")
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"a contract value for the shell must be one line, got {text!r}")
    return "'" + text.replace("'", "'\\''") + "'"


def _scalar(value: object) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _line(name: str, value: object) -> str | None:
    target = PREFIX + name
    if _scalar(value):
        return f"readonly {target}={quote(value)}"  # type: ignore[arg-type]
    if isinstance(value, tuple) and value and all(_scalar(v) for v in value):
        return f"readonly -a {target}=({' '.join(quote(v) for v in value)})"
    if isinstance(value, dict) and value and all(_scalar(v) for v in value.values()):
        if not all(isinstance(k, str) and k for k in value):
            return None
        pairs = " ".join(f"[{quote(k)}]={quote(v)}" for k, v in sorted(value.items()))
        return f"readonly -A {target}=({pairs})"
    return None


def constants(module: ModuleType) -> dict[str, str]:
    """Name (with :data:`PREFIX`) -> its ``readonly`` line, for every constant of ``module``
    a shell can hold, in name order."""
    lines = {}
    for name in sorted(vars(module)):
        if not name.isupper() or name.startswith("_"):
            continue
        line = _line(name, getattr(module, name))
        if line is not None:
            lines[PREFIX + name] = line
    return lines


def render(module: ModuleType | None = None) -> str:
    """The text of ``contract.sh`` for ``module`` (default: :mod:`cdk_trn_runtime.contract`)."""
    if module is None:
        import cdk_trn_runtime.contract as contract

        module = contract
    body = "\n".join(constants(module).values())
    return (
        "# shellcheck shell=bash disable=SC2034\n"
        "# cdk-trn contract for shell scripts, GENERATED from cdk_trn_runtime/contract/\n"
        "# __init__.py by `python -m cdk_trn_runtime.contract.shell`: do not edit. Source it;\n"
        f"# every name is {PREFIX}<the contract's name>.\n"
        # The guard runs no command: an exported function (BASH_FUNC_declare%%) can stand in for
        # ``declare`` or ``builtin``, never for an expansion; ${NAME@a} is the name's attributes
        # (behind ${NAME+...}, which set -u allows on an unset name).
        f"[[ ${{{_LOADED}+${{{_LOADED}@a}}}} == *r* ]] && return 0\n"
        f"readonly {_LOADED}=1\n"
        f"{body}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Write :data:`CONTRACT_SH`; with ``--check``, exit 1 when it differs from :func:`render`."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--check"]:
        if CONTRACT_SH.read_text() != text:
            print(f"{CONTRACT_SH} is stale: run python -m cdk_trn_runtime.contract.shell")
            return 1
        return 0
    if args:
        print("usage: python -m cdk_trn_runtime.contract.shell [--check]", file=sys.stderr)
        return 2
    CONTRACT_SH.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
