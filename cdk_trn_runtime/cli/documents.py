"""The SSM documents ``cdk-trn`` runs, and nothing else (issue 20): IAM cannot see a Run Command's
parameters, so permission for ``AWS-RunShellScript`` is permission to run anything as root. The
cluster stack creates these documents (``cdk_trn.researcher_access``): Command documents with a
fixed script each and parameters an ``allowedPattern`` validates, and a Session document whose
fixed command opens a shell as the job user. A policy that names these documents gives exactly
``submit``, ``queue``, ``logs``, ``status``, ``cancel``, the read-only job completion log (cost
reports), the vault attestation relay and ``shell``.

Every parameter reaches its script inside single quotes (``x='{{ X }}'``), and no pattern admits a
quote, a newline or a backslash, so a value is data, never code. Free-form values (the job script,
sbatch's options, the script's arguments) travel as base64, and the script turns them into files
or NUL-separated argument lists, never into shell text.

:func:`render` substitutes the parameters as SSM does (after checking them against their
patterns); the tests run the rendered scripts.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from cdk_trn_runtime.contract import (
    SHARED_HOMES,
    SHARED_JOB_LOGS,
    SLURM_DRAIN_REASON_PREFIX,
    researcher_document,
)

__all__ = [
    "EXIT_NO_CONTAINER",
    "EXIT_NO_FILE",
    "Document",
    "command_documents",
    "render",
    "session_document",
]

EXIT_NO_CONTAINER = 69
EXIT_NO_FILE = 66
LOG_CHUNK_BYTES = 16 * 1024
QUEUE_FORMAT = "%.12i %.10P %.24j %.10u %.12T %.11M %.11l %.6D %R"
NODE_FORMAT = "%-18N %-10P %-12T %5c %9m %-40f %-19H %E"
COMMAND_TIMEOUT_SECONDS = 120

BASE64 = r"^[A-Za-z0-9+/]*={0,2}$"
JOB_ID = r"^[0-9]{1,10}(_[0-9]{1,7})?$"
#: A plain file name (``script_file_name``'s output), never ``.`` or ``..``.
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
LINES = r"^([0-9]{1,7}|all)$"
OFFSET = r"^[0-9]{0,15}$"
NONCE = r"^[A-Za-z0-9%_.-]{1,128}$"
#: Where ``cdk-trn submit --code`` puts a code archive in the code bucket.
CODE_PREFIX = "code/"
CODE_KEY = r"^$|^code/[A-Za-z0-9._-]{1,160}\.tar\.gz$"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
#: The vault's TCP port range (its server is not root: cdk_trn.enclave.vault's ``port``).
_PORT_1024_65535 = (
    r"(102[4-9]|10[3-9][0-9]|1[1-9][0-9]{2}|[2-9][0-9]{3}|[1-5][0-9]{4}|6[0-4][0-9]{3}"
    r"|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
#: The vault's URL as the relay (run as root on a node) may fetch it: a private VPC address
#: (RFC 1918) on a port 1024-65535. Never instance metadata (169.254.169.254:80), loopback or
#: anything outside the VPC. (The vault's exact port is the vault stack's, unknown here.)
VAULT_URL = (
    rf"^http://(10\.{_OCTET}|172\.(1[6-9]|2[0-9]|3[01])|192\.168)\.{_OCTET}\.{_OCTET}"
    rf":{_PORT_1024_65535}$"
)


@dataclass(frozen=True)
class Document:
    """One Command document: its action, fixed script and validated parameters."""

    action: str
    description: str
    script: str
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        """The document as SSM takes it (schema 2.2, one ``aws:runShellScript`` step)."""
        return {
            "schemaVersion": "2.2",
            "description": self.description,
            "parameters": {
                name: {"type": "String", **spec} for name, spec in self.parameters.items()
            },
            "mainSteps": [
                {
                    "action": "aws:runShellScript",
                    "name": self.action,
                    "inputs": {
                        "runCommand": self.script.splitlines(),
                        "timeoutSeconds": str(COMMAND_TIMEOUT_SECONDS),
                    },
                }
            ],
        }


def _param(pattern: str, description: str, default: str | None = None) -> dict[str, str]:
    spec = {"allowedPattern": pattern, "description": description}
    if default is not None:
        spec["default"] = default
    return spec


def _preamble(container: str, user: str) -> str:
    # No double braces anywhere: SSM would read them as a parameter.
    return textwrap.dedent(
        f"""\
        set -eu
        container='{container}'
        user='{user}'
        running=$(docker ps -q --filter "name=^$container\\$" --filter status=running \\
          2>/dev/null || true)
        if [ -z "$running" ]; then
          echo "cdk-trn: the Slurm controller container $container is not running on this" \\
            "instance (see: docker ps -a; journalctl -u docker)" >&2
          exit {EXIT_NO_CONTAINER}
        fi
        """
    )


def _safe(value: str, what: str) -> str:
    """A stack value written single-quoted into a script: no quote, backslash, newline or
    double brace (which SSM would read as a parameter)."""
    if not value or re.search(r"['\\\n\r]|\{\{|\}\}", value):
        raise ValueError(f"{what} {value!r} cannot be written into a document")
    return value


def command_documents(
    *,
    container: str,
    job_user: str,
    shared_root: str,
    code_bucket: str = "",
    region: str = "",
) -> dict[str, Document]:
    """Every Command document of a cluster, by action. ``code_bucket``: where ``submit`` may
    fetch a code archive from (``code/*.tar.gz``; none: ``CodeKey`` must stay empty)."""
    container = _safe(container, "container")
    user = _safe(job_user, "job user")
    home = _safe(str(PurePosixPath(shared_root) / SHARED_HOMES / job_user), "home")
    jobs = f"{home}/jobs"
    completions = _safe(f"{shared_root}/{SHARED_JOB_LOGS}/jobcomp.log", "completion log")
    pre = _preamble(container, user)
    reason = " " + SLURM_DRAIN_REASON_PREFIX
    docs = [
        Document(
            "submit",
            "cdk-trn submit: write a job script (base64) into the job user's jobs directory as "
            "that user and sbatch it as that user",
            pre
            + textwrap.dedent(
                f"""\
                home='{home}'
                jobs='{jobs}'
                script='{{{{ Script }}}}'
                name='{{{{ FileName }}}}'
                sbatch_args='{{{{ SbatchArgs }}}}'
                script_args='{{{{ ScriptArgs }}}}'
                code_key='{{{{ CodeKey }}}}'
                path="$jobs/$name"
                workdir="$home"
                if ! docker exec -u "$user" -w / "$container" test -d "$home"; then
                  echo "cdk-trn: the job user's home $home does not exist in $container" >&2
                  exit {EXIT_NO_FILE}
                fi
                printf '%s' "$script" | docker exec -i -u "$user" -w / "$container" \\
                  sh -c 'mkdir -p "$1" && set -C && base64 -d > "$2"' sh "$jobs" "$path"
                if [ -n "$code_key" ]; then
                  # Root only fetches the archive; the job user unpacks it (and owns the files).
                  workdir="$path.code"
                  aws s3 cp --region '{region or "us-east-1"}' --only-show-errors \\
                    "s3://{code_bucket or "none"}/$code_key" - \\
                    | docker exec -i -u "$user" -w / "$container" sh -c \\
                      'mkdir "$1" && tar -xzf - -C "$1" --no-same-owner --no-same-permissions' \\
                      sh "$workdir"
                fi
                {{ printf '%s' "$sbatch_args" | base64 -d; printf '%s\\000' "$path"
                  printf '%s' "$script_args" | base64 -d; }} \\
                  | xargs -0 docker exec -u "$user" -w "$workdir" "$container" sbatch --parsable \\
                  || exit 1
                """
            ),
            {
                "Script": _param(BASE64, "the job script, base64"),
                "FileName": _param(FILE_NAME, "its file name in the jobs directory"),
                "SbatchArgs": _param(BASE64, "sbatch options, each NUL-terminated, base64", ""),
                "ScriptArgs": _param(BASE64, "the script's arguments, NUL-terminated, base64", ""),
                "CodeKey": _param(
                    CODE_KEY if code_bucket else "^$",
                    "a code archive in the code bucket, unpacked as the job user beside the "
                    "script; sbatch runs there",
                    "",
                ),
            },
        ),
        Document(
            "queue",
            "cdk-trn queue: squeue as the job user",
            pre + f'docker exec -u "$user" -w / "$container" squeue --format=\'{QUEUE_FORMAT}\'\n',
        ),
        Document(
            "status",
            "cdk-trn status: node states, drain reasons and running jobs",
            pre
            + textwrap.dedent(
                f"""\
                echo "NODES"
                docker exec -u "$user" -w / "$container" sinfo -N --format='{NODE_FORMAT}'
                echo
                echo "DRAINED BY HEALTH CHECKS"
                reasons=$(docker exec -u "$user" -w / "$container" \\
                  sinfo --list-reasons --noheader --format='%N %E')
                printf '%s\\n' "$reasons" | grep -F -- '{reason}' || echo "none"
                echo
                echo "RUNNING JOBS"
                docker exec -u "$user" -w / "$container" \\
                  squeue --states=RUNNING --format='{QUEUE_FORMAT}'
                """
            ),
        ),
        Document(
            "cancel",
            "cdk-trn cancel: scancel a job as the job user",
            pre
            + textwrap.dedent(
                """\
                job='{{ JobId }}'
                docker exec -u "$user" -w / "$container" scancel "$job"
                echo "cancelled $job"
                """
            ),
            {"JobId": _param(JOB_ID, "the Slurm job id")},
        ),
        Document(
            "logs",
            "cdk-trn logs: one piece of a job's output file (base64) and the job's state",
            pre
            + textwrap.dedent(
                f"""\
                home='{home}'
                job='{{{{ JobId }}}}'
                offset='{{{{ Offset }}}}'
                lines='{{{{ Lines }}}}'
                state=
                if info=$(docker exec -u "$user" -w / "$container" scontrol show job "$job" \\
                  2>/dev/null); then
                  out=$(printf '%s\\n' "$info" | sed -n 's/^[[:space:]]*StdOut=//p' | head -n 1)
                  state=$(printf '%s\\n' "$info" \\
                    | sed -n 's/.*JobState=\\([A-Z_]*\\).*/\\1/p' | head -n 1)
                else
                  out="$home/slurm-$job.out"
                fi
                size=$(docker exec -u "$user" -w / "$container" \\
                  sh -c 'if [ -f "$1" ]; then wc -c < "$1"; else echo -1; fi' sh "$out")
                size=$((size))
                if [ -n "$offset" ]; then
                  start=$offset
                elif [ "$lines" != all ] && [ "$size" -gt 0 ]; then
                  tail_bytes=$(docker exec -u "$user" -w / "$container" \\
                    tail -n "$lines" "$out" | wc -c)
                  start=$((size - tail_bytes))
                else
                  start=0
                fi
                echo "cdk-trn-log state=$state size=$size start=$start path=$out"
                if [ "$size" -gt "$start" ]; then
                  docker exec -u "$user" -w / "$container" \\
                    sh -c 'tail -c +"$2" "$1" | head -c "$3" | base64' sh "$out" "$((start + 1))" \\
                    {LOG_CHUNK_BYTES}
                fi
                """
            ),
            {
                "JobId": _param(JOB_ID, "the Slurm job id"),
                "Offset": _param(OFFSET, "the byte to start from (empty: by Lines)", ""),
                "Lines": _param(LINES, "start from the last LINES lines, or all", "200"),
            },
        ),
        Document(
            "completions",
            "cdk-trn job completions (read-only, for cost reports): the end of Slurm's job "
            "completion log",
            pre
            + textwrap.dedent(
                f"""\
                lines='{{{{ Lines }}}}'
                log='{completions}'
                if [ "$lines" = all ]; then
                  docker exec -u "$user" -w / "$container" cat "$log"
                else
                  docker exec -u "$user" -w / "$container" tail -n "$lines" "$log"
                fi
                """
            ),
            {"Lines": _param(LINES, "the last LINES lines, or all", "1000")},
        ),
        Document(
            "relay",
            "cdk-trn vault attestation relay (on a node): fetch the vault's attestation for a "
            "nonce; the caller checks it",
            textwrap.dedent(
                """\
                set -eu
                url='{{ VaultUrl }}'
                nonce='{{ Nonce }}'
                curl --silent --show-error --fail-with-body --noproxy '*' --max-time 20 \\
                  "$url/v1/attestation?nonce=$nonce"
                """
            ),
            {
                "VaultUrl": _param(VAULT_URL, "the vault's URL (http://<private IP>:<port>)"),
                "Nonce": _param(NONCE, "the nonce, base64 URL-encoded"),
            },
        ),
    ]
    return {doc.action: doc for doc in docs}


def session_document(*, container: str, job_user: str, shared_root: str) -> dict[str, Any]:
    """The Session document of ``cdk-trn shell``: a login shell in the controller's container
    as the job user, in their home; nothing else (no parameters)."""
    home = str(PurePosixPath(shared_root) / SHARED_HOMES / job_user)
    command = shlex.join(
        [
            "docker",
            "exec",
            "-it",
            "-u",
            _safe(job_user, "job user"),
            "-w",
            _safe(home, "home"),
            _safe(container, "container"),
            "bash",
            "-l",
        ]
    )
    return {
        "schemaVersion": "1.0",
        "description": "cdk-trn shell: a login shell as the job user in the Slurm container",
        "sessionType": "InteractiveCommands",
        "parameters": {},
        "properties": {"linux": {"commands": command, "runAsElevated": True}},
    }


_PLACEHOLDER = re.compile(r"'\{\{ (\w+) \}\}'")


def render(document: Document, values: Mapping[str, str]) -> str:
    """The script as SSM runs it with ``values`` (defaults for the rest); ValueError for an
    unknown parameter or a value its pattern refuses, as SSM refuses it."""
    unknown = set(values) - set(document.parameters)
    if unknown:
        raise ValueError(f"{document.action} takes no parameter {sorted(unknown)}")
    resolved = {}
    for name, spec in document.parameters.items():
        value = values.get(name, spec.get("default"))
        if value is None:
            raise ValueError(f"{document.action} needs the parameter {name}")
        if not re.search(spec["allowedPattern"], value):
            raise ValueError(f"{document.action}: {name}={value!r} is not allowed")
        resolved[name] = value
    return _PLACEHOLDER.sub(lambda m: "'" + resolved[m.group(1)] + "'", document.script)


def document_name(cluster: str, action: str) -> str:
    return researcher_document(cluster, action)
