"""``cdk-trn``: submit and watch Slurm jobs on a deployed cdk-trn cluster, through SSM only;
check its signed checkpoints with what its stacks publish (``vault-key``, ``verify``)."""

from __future__ import annotations

import argparse
import codecs
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from botocore.exceptions import BotoCoreError, NoCredentialsError

from cdk_trn_runtime.cli import cost as cost_command
from cdk_trn_runtime.cli import remote
from cdk_trn_runtime.cli import vault as vault_commands
from cdk_trn_runtime.cli.aws import (
    Aws,
    CliError,
    RemoteResult,
    exit_code,
    failure_message,
    find_controller,
    run_document,
    session_argv,
    stack_outputs,
)
from cdk_trn_runtime.cli.documents import CODE_PREFIX
from cdk_trn_runtime.contract import (
    OUTPUT_CODE_ARCHIVE_BUCKET,
    OUTPUT_CODE_BUCKET,
    RESEARCHER_SHELL,
    researcher_document,
)

#: The default app's cluster stack: ``<prefix>-cluster`` with the default prefix (``stacks.config``;
#: a test keeps the two equal).
DEFAULT_STACK = "trn-cluster"
#: Seconds a submit, queue, status or log read may take on the controller.
COMMAND_TIMEOUT_SECONDS = 120
#: Seconds between two reads of a followed job's output when nothing new came.
FOLLOW_INTERVAL_SECONDS = 5.0
#: What a job's output may not send to a terminal: C0 controls but tab and newline (ESC starts
#: the escape sequences that move the cursor, retitle the window or write the clipboard), DEL and
#: C1 controls (CSI as one character).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` without control characters (tab and newline kept); a carriage return becomes a
    newline, so progress lines stay readable."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _writer(args: argparse.Namespace) -> Callable[[str], object]:
    """Writes what a job or Slurm printed: verbatim with --raw or into a pipe or file, without
    control characters on a terminal."""
    raw = getattr(args, "raw", False) or not sys.stdout.isatty()
    return sys.stdout.write if raw else (lambda text: sys.stdout.write(terminal_safe(text)))


PLUGIN_INSTALL_URL = (
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/"
    "session-manager-working-with-install-plugin.html"
)

MakeAws = Callable[[str | None, str | None], Aws]


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The subcommands repeat the global options with SUPPRESS defaults so that they may come
    # before or after the subcommand's name without the subparser resetting them.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--stack",
        default=default(DEFAULT_STACK),
        help=f"the cluster's CloudFormation stack (default: {DEFAULT_STACK})",
    )
    parser.add_argument("--region", default=default(None), help="AWS region of the stack")
    parser.add_argument("--profile", default=default(None), help="AWS profile to use")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdk-trn",
        description=(
            "Run Slurm jobs on a deployed cdk-trn cluster. Finds the controller from the stack's "
            "outputs and works through AWS Systems Manager only (no SSH, no open port)."
        ),
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="copy a job script to the cluster and sbatch it; prints the job id",
        description=(
            "Copy SCRIPT to <shared root>/home/<user>/jobs/ on the cluster and submit it with "
            "sbatch --parsable, with --requeue unless --no-requeue is given. Arguments after "
            "SCRIPT go to sbatch; arguments after -- go to the script."
        ),
    )
    submit.add_argument(
        "--code",
        type=Path,
        default=None,
        metavar="DIR",
        help="also upload DIR (a tar.gz under code/ in the storage stack's dataset bucket); "
        "the job user "
        "unpacks it beside the script on the cluster and sbatch runs there",
    )
    submit.add_argument("script", type=Path, help="the local job script (text, at most 64 KiB)")
    submit.add_argument(
        "sbatch_args",
        nargs=argparse.REMAINDER,
        metavar="SBATCH_ARGS",
        help="sbatch options (e.g. -N 2 --time 1:00:00), then -- and the script's arguments",
    )

    commands.add_parser(
        "queue", parents=[common], help="the jobs Slurm knows (squeue)", description="squeue"
    )

    cancel = commands.add_parser(
        "cancel", parents=[common], help="cancel a job (scancel)", description="scancel JOB"
    )
    cancel.add_argument("job", type=_job_id, help="Slurm job id (1234, or 1234_5)")

    logs = commands.add_parser(
        "logs",
        parents=[common],
        help="print a job's output file",
        description="Print the job's output file (its StdOut), found with scontrol show job.",
    )
    logs.add_argument("job", type=_job_id, help="Slurm job id (1234, or 1234_5 for an array task)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job ends"
    )
    logs.add_argument(
        "-n",
        "--lines",
        type=_lines,
        default=200,
        help="start from the last LINES lines, or 'all' (default: 200)",
    )
    _raw_option(logs)

    commands.add_parser(
        "shell",
        parents=[common],
        help="interactive shell on the controller as the job user (Session Manager)",
        description=(
            "An interactive login shell in the controller's Slurm container, as the job user. "
            "Needs the AWS CLI and the Session Manager plugin."
        ),
    )
    status = commands.add_parser(
        "status",
        parents=[common],
        help="node states, drain reasons and running jobs",
        description="sinfo -N with states and reasons, then the running jobs.",
    )
    _raw_option(status)

    cost = commands.add_parser(
        "cost",
        parents=[common],
        help="what each job cost (node-hours x price), per job or user, and idle node-hours",
        description=(
            "Read Slurm's job completion log (through the stack's read-only SSM document, or "
            "--jobcomp FILE) and the running jobs, and print per job: id, user, name, nodes, "
            "elapsed, node-hours and cost = round(node-hours x price, 2); then the totals and "
            "the node-hours the nodes were in service without a job. --format json writes only "
            "JSON on stdout."
        ),
    )
    cost_command.add_arguments(cost)

    vault_key = commands.add_parser(
        "vault-key",
        parents=[common],
        help="the enclave vault's attested public key (PEM), checked against the stack outputs",
        description=(
            "Ask the vault for an attestation over a fresh nonce (relayed by a cluster node "
            "unless --vault-url) and print its public key only if the document chains to the "
            "AWS Nitro root, carries the nonce, the vault stack's VaultImagePcr0 and VaultKeyArn "
            "and this key; otherwise exit 1 naming the failed check."
        ),
    )
    vault_commands.add_arguments(vault_key)
    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="verify a signed checkpoint with the attested vault key and the stack outputs",
        description=(
            "Verify CHECKPOINT (a directory) against its signed manifest (default: "
            "CHECKPOINT.manifest.json beside it) with the vault's attested key (as vault-key), "
            "expecting the cluster stack's ClusterName and the step CHECKPOINT's name ends with; "
            "exit 1 on any tampered, missing or extra file or identity mismatch."
        ),
    )
    verify.add_argument("checkpoint", type=Path, help="the checkpoint directory, e.g. step-1000")
    verify.add_argument("--manifest", type=Path, default=None, help="the signed manifest")
    verify.add_argument("--run-id", default=None, help="fail unless the manifest names this run")
    verify.add_argument(
        "--any-run",
        action="store_true",
        help="accept a checkpoint of any run of the cluster (without it, --run-id is required)",
    )
    verify.add_argument(
        "--step",
        type=int,
        default=None,
        help="fail unless it is this step (default: the number CHECKPOINT's name ends with)",
    )
    verify.add_argument(
        "--path", default=None, help="fail unless it was signed at this path on the cluster"
    )
    vault_commands.add_arguments(verify)
    return parser


def _job_id(value: str) -> str:
    try:
        return remote.job_id(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _lines(value: str) -> int | None:
    if value == "all":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"lines must be a positive number or 'all', got {value!r}")


def read_job_script(path: Path) -> bytes:
    """The script's bytes, if it is a text file of at most 64 KiB."""
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    size = path.stat().st_size
    if size > remote.MAX_SCRIPT_BYTES:
        raise CliError(
            f"{path} is {size} bytes; job scripts are limited to {remote.MAX_SCRIPT_BYTES} "
            "(put data and code on the shared file system or in the image)"
        )
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        text = b"\0" not in data
    except UnicodeDecodeError:
        text = False
    if not text:
        raise CliError(f"{path} is not a text file (NUL bytes or not UTF-8); sbatch takes a script")
    return data


def _split_script_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    if "--" in args:
        at = list(args).index("--")
        return list(args[:at]), list(args[at + 1 :])
    return list(args), []


def cmd_submit(aws: Aws, args: argparse.Namespace) -> int:
    script = read_job_script(args.script)
    sbatch_args, script_args = _split_script_args(args.sbatch_args)
    outputs = stack_outputs(aws, args.stack)
    controller = find_controller(aws, args.stack, outputs)
    name = remote.script_file_name(args.script.name, aws.now().strftime("%Y%m%dT%H%M%SZ"))
    code_key = _upload_code(aws, args.stack, outputs, args.code, name) if args.code else ""
    result = _run(
        aws,
        controller,
        remote.submit_invocation(script, name, sbatch_args, script_args, code_key=code_key),
        comment=f"cdk-trn submit {name}",
        timeout_seconds=COMMAND_TIMEOUT_SECONDS,
    )
    if not result.ok:
        raise CliError(failure_message(result, "sbatch"), exit_code(result))
    try:
        job = remote.parse_job_id(result.stdout)
    except ValueError as error:
        raise CliError(str(error)) from None
    print(job)
    print(
        f"cdk-trn: submitted {controller.jobs_dir}/{name} as job {job}; "
        f"follow it with: cdk-trn logs {job} --follow",
        file=sys.stderr,
    )
    return 0


#: The largest code archive ``submit --code`` uploads (code, not data: data goes on the shared
#: file system).
MAX_CODE_ARCHIVE_BYTES = 256 * 1024 * 1024


def _upload_code(aws: Aws, stack: str, outputs: dict[str, str], directory: Path, name: str) -> str:
    """Pack ``directory`` (regular files and directories only) as ``code/<name>.tar.gz`` in the
    bucket of the cluster stack's output ``OUTPUT_CODE_ARCHIVE_BUCKET`` (in ``outputs``; for a
    cluster deployed before that output, the dataset bucket of the storage stack beside it,
    ``<prefix>-storage``); its key."""
    import io  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    if not directory.is_dir():
        raise CliError(f"{directory}: --code needs a directory", 2)
    bucket = outputs.get(OUTPUT_CODE_ARCHIVE_BUCKET)
    if not bucket:
        storage = stack.removesuffix("-cluster") + "-storage"
        if storage == stack + "-storage":
            raise CliError(
                f"stack {stack} has no output {OUTPUT_CODE_ARCHIVE_BUCKET} for --code: its "
                "scheduler allows no code archives (ResearcherAccess.allow_code_archives)"
            )
        bucket = stack_outputs(aws, storage).get(OUTPUT_CODE_BUCKET)
        if not bucket:
            raise CliError(
                f"stacks {stack} and {storage} have no output {OUTPUT_CODE_ARCHIVE_BUCKET} or "
                f"{OUTPUT_CODE_BUCKET} for --code"
            )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue  # links and special files stay behind
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    if buffer.tell() > MAX_CODE_ARCHIVE_BYTES:
        raise CliError(
            f"{directory} packs to {buffer.tell()} bytes, more than {MAX_CODE_ARCHIVE_BYTES}: "
            "put data on the shared file system"
        )
    key = f"{CODE_PREFIX}{name}.tar.gz"
    aws.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return key


def _run(
    aws: Aws,
    controller: remote.Controller,
    invocation: remote.Invocation,
    *,
    comment: str,
    timeout_seconds: int = 0,
) -> RemoteResult:
    """Run one of the cluster's Command documents (never AWS-RunShellScript)."""
    action, values = invocation
    return run_document(
        aws,
        controller.instance_id,
        researcher_document(controller.cluster_name, action),
        values,
        comment=comment,
        timeout_seconds=timeout_seconds or COMMAND_TIMEOUT_SECONDS,
    )


def _print_remote(
    aws: Aws, args: argparse.Namespace, what: str, invocation: remote.Invocation
) -> int:
    controller = find_controller(aws, args.stack)
    result = _run(aws, controller, invocation, comment=f"cdk-trn {what}")
    if not result.ok:
        raise CliError(failure_message(result, what), exit_code(result))
    _writer(args)(result.stdout)
    return 0


def cmd_queue(aws: Aws, args: argparse.Namespace) -> int:
    return _print_remote(aws, args, "queue", ("queue", {}))


def cmd_status(aws: Aws, args: argparse.Namespace) -> int:
    return _print_remote(aws, args, "status", ("status", {}))


def cmd_cancel(aws: Aws, args: argparse.Namespace) -> int:
    return _print_remote(aws, args, "cancel", remote.cancel_invocation(args.job))


def cmd_logs(aws: Aws, args: argparse.Namespace) -> int:
    controller = find_controller(aws, args.stack)
    write = _writer(args)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset: int | None = None
    wait = 0.0
    while True:
        if wait:
            aws.sleep(wait)
        result = _run(
            aws,
            controller,
            remote.log_chunk_invocation(args.job, offset=offset, lines=args.lines),
            comment=f"cdk-trn logs {args.job}",
        )
        if not result.ok:
            raise CliError(failure_message(result, "logs"), exit_code(result))
        try:
            chunk = remote.parse_log_chunk(result.stdout)
        except ValueError as error:
            raise CliError(str(error)) from None
        if chunk.size < 0:
            if not chunk.state:
                raise CliError(
                    f"job {args.job} is not known to Slurm and has no output at {chunk.path}",
                    exit_code=remote.EXIT_NO_FILE,
                )
            if not (args.follow and chunk.active):
                print(f"cdk-trn: job {args.job} is {chunk.state}; no output yet", file=sys.stderr)
                return 0
        elif offset is not None and chunk.size < offset:
            # A requeued job starts its output file again.
            print(f"cdk-trn: {chunk.path} restarted (job {chunk.state})", file=sys.stderr)
            offset, wait = 0, 0.0
            continue
        if chunk.data:
            write(decoder.decode(chunk.data))
            sys.stdout.flush()
        offset = chunk.start + len(chunk.data)
        if chunk.size >= 0 and offset < chunk.size:
            wait = 0.0  # more to read now
            continue
        if not (args.follow and chunk.active):
            write(decoder.decode(b"", final=True))
            return 0
        wait = FOLLOW_INTERVAL_SECONDS


def cmd_shell(
    aws: Aws,
    args: argparse.Namespace,
    *,
    which: Callable[[str], str | None],
    run_interactive: Callable[[Sequence[str]], int],
) -> int:
    aws_cli = which("aws")
    if not aws_cli:
        raise CliError(
            "cdk-trn shell needs the AWS CLI v2 (aws) on PATH: "
            "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
        )
    if not which("session-manager-plugin"):
        raise CliError(
            "cdk-trn shell needs the Session Manager plugin (session-manager-plugin) on PATH; "
            f"install it as described at {PLUGIN_INSTALL_URL}"
        )
    controller = find_controller(aws, args.stack)
    argv = session_argv(
        aws,
        controller.instance_id,
        researcher_document(controller.cluster_name, RESEARCHER_SHELL),
        aws_cli=aws_cli,
    )
    return run_interactive(argv)


def _run_interactive(argv: Sequence[str]) -> int:
    return subprocess.call(list(argv))


def main(
    argv: Sequence[str] | None = None,
    *,
    make_aws: MakeAws = Aws.from_session,
    which: Callable[[str], str | None] = shutil.which,
    run_interactive: Callable[[Sequence[str]], int] = _run_interactive,
) -> int:
    """Run ``cdk-trn`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cost" and args.jobcomp is not None:
            return cost_command.cmd_cost_local(args)
        aws = make_aws(args.profile, args.region)
        if args.command == "cost":
            return cost_command.cmd_cost(aws, args)
        if args.command == "submit":
            return cmd_submit(aws, args)
        if args.command == "queue":
            return cmd_queue(aws, args)
        if args.command == "logs":
            return cmd_logs(aws, args)
        if args.command == "status":
            return cmd_status(aws, args)
        if args.command == "cancel":
            return cmd_cancel(aws, args)
        if args.command == "vault-key":
            return vault_commands.cmd_vault_key(aws, args)
        if args.command == "verify":
            return vault_commands.cmd_verify(aws, args)
        return cmd_shell(aws, args, which=which, run_interactive=run_interactive)
    except CliError as error:
        print(f"cdk-trn: error: {error}", file=sys.stderr)
        return error.exit_code
    except NoCredentialsError:
        print(
            "cdk-trn: error: no AWS credentials (aws configure, aws sso login, or --profile)",
            file=sys.stderr,
        )
        return 1
    except BotoCoreError as error:
        print(f"cdk-trn: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


def _raw_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw",
        action="store_true",
        help="write control characters as they are (default on a terminal: removed, so a job's "
        "escape sequences cannot drive your terminal)",
    )
