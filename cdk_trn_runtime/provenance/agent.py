"""The node's signing agent: the only signer of checkpoints on a cluster node, run by root.

A job asks it, over a unix socket, to sign *its own* checkpoint; everything the manifest says about
whose checkpoint it is comes from Slurm and the kernel, never from the caller:

- the caller's pid and uid from the socket (``SO_PEERCRED``, set by the kernel at connect);
- the job that pid belongs to from slurmd (``scontrol pidinfo <pid>``), and that job's user,
  name, state and nodes from slurmctld (``scontrol show job -o <id>``): the caller's uid must be
  the job's user, the job must be running on this node;
- the run id is the Slurm job id (a requeue keeps it); the cluster is the node's; the path is the
  checkpoint's real path, which must be a directory the caller's uid owns, with no link in it;
- the manifest (every file's SHA-384 and size) is computed here over the committed files, by a
  child process that runs as the caller's uid (root never opens what a job points it at).

The vault signs the manifest's digest for the agent only: the agent alone holds the credential
the vault accepts (the cluster's signer role, assumed with the node role, whose credentials only
root can fetch: imds_guard.sh). The signed manifest goes back to the caller, which writes it
beside its checkpoint (root writes nothing into a directory a job controls).

Every commit is recorded, signed or not, with its files' SHA-384, in a root-owned directory on
the shared file system (``<shared root>/slurm/signer/<job id>.jsonl``, readable by root only), so
that a requeue of the same job, on any node, may resume an unsigned ``latest`` it committed itself
(a vault outage leaves those) with exactly the files it committed, and nothing else: a checkpoint
the record says was signed is resumed only with a signature that verifies.

The agent signs only what it derived itself: run id, cluster, step and path, and the time; the
manifest child (the job's uid, so the job can tamper with it) contributes the file list only, and
a child naming another identity is refused.

Protocol: one JSON object per line each way. Requests: ``{"op": "sign", "checkpoint": PATH,
"step": N, "resumed_from": {...} | null}``, ``{"op": "committed", "checkpoint": PATH}``,
``{"op": "identity"}``. Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

    python -P -m cdk_trn_runtime.provenance.agent serve [--socket PATH] [--records DIR]

The concerns live in their own modules: the job side (:mod:`~.agent_client`), the caller's
identity (:mod:`~.peer_identity`), the manifest child (:mod:`~.manifest_child`), the decisions and
records (:mod:`~.signing_agent`) and the socket (:mod:`~.agent_socket`); this module is the daemon
(``serve``) and the child's entry point (``manifest``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.provenance.agent_client import DEFAULT_SOCKET
from cdk_trn_runtime.provenance.agent_socket import AgentServer
from cdk_trn_runtime.provenance.manifest_child import manifest_child
from cdk_trn_runtime.provenance.peer_identity import Slurm
from cdk_trn_runtime.provenance.signing_agent import SigningAgent

__all__ = ["main"]

LOG = logging.getLogger("cdk_trn.signer")
#: The agent's credential: the role the vault accepts, assumed with the node role.
ENV_SIGNER_ROLE = "CDK_TRN_SIGNER_ROLE_ARN"


def _vault_signer(env: Mapping[str, str]) -> Callable[[], Any] | None:
    """The vault client with the signer role's credentials, found again at each request; None
    where the cluster has no vault (no URL and no parameter)."""
    from cdk_trn_runtime.provenance.signing import VaultLocator  # noqa: PLC0415

    locator = VaultLocator.from_environment(env)
    if locator is None:
        return None
    role = env.get(ENV_SIGNER_ROLE, "").strip()
    region = env.get(contract.SLURM_ENV_REGION) or env.get("AWS_REGION")

    def make() -> Any:
        import botocore.session  # noqa: PLC0415
        from botocore.credentials import Credentials  # noqa: PLC0415

        from cdk_trn_runtime.vault.client import VaultClient  # noqa: PLC0415

        url = locator.find()
        if url is None:
            return None
        session = botocore.session.get_session()
        credentials = session.get_credentials()
        if role:
            sts = session.create_client("sts", region_name=region)
            answer = sts.assume_role(RoleArn=role, RoleSessionName="cdk-trn-signing-agent")
            c = answer["Credentials"]
            credentials = Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
        return VaultClient(url, credentials=credentials)

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdk_trn_runtime.provenance.agent")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the node's signing socket (as root)")
    run.add_argument("--socket", default=DEFAULT_SOCKET)
    run.add_argument("--records", default=None, help="default: <shared root>/slurm/signer")
    sub.add_parser("manifest", help="(internal) the manifest child, as the caller's uid")
    args = parser.parse_args(argv)
    if args.command == "manifest":
        return manifest_child()
    if os.geteuid() != 0:
        print("signing agent: must run as root", file=sys.stderr)
        return 2
    from cdk_trn_runtime.provenance.signing import node_environment  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="signing agent: %(message)s")
    env = node_environment(os.environ)
    shared = env.get("CDK_TRN_SHARED_ROOT", "")
    records = Path(args.records or f"{shared}/slurm/signer")
    node = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    agent = SigningAgent(
        slurm=Slurm(node),
        cluster=env.get(contract.ENV_CLUSTER, ""),
        records=records,
        signer=_vault_signer(env),
    )
    server = AgentServer(args.socket, agent)
    LOG.info("serving %s for node %s, records in %s", args.socket, node, records)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
