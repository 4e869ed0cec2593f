"""Least privilege for researchers: the SSM documents ``cdk-trn`` uses, and nothing else.

IAM cannot see a Run Command's parameters, so permission for ``AWS-RunShellScript`` (or a Session
with ``AWS-StartInteractiveCommand``) is permission to run anything as root on the controller.
:class:`ResearcherAccess` creates, per cluster, one SSM Command document per ``cdk-trn`` action
(submit, queue, logs, status, cancel, the read-only job completion log for cost reports, the vault
attestation relay), each a fixed script whose parameters an ``allowedPattern`` validates, and a
Session document whose fixed command opens a shell as the job user in the Slurm container. The
scripts are ``cdk_trn_runtime/cli/documents.py``'s, the names ``contract.researcher_document``'s,
so the CLI and the stack agree. A researcher's IAM policy names these documents and the cluster's
instances; see the README ("Run your jobs").
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._outputs import add_outputs
from cdk_trn.compliance import acknowledge_wildcards
from cdk_trn.errors import CdkTrnError
from cdk_trn_runtime.cli.documents import CODE_PREFIX, command_documents, session_document
from cdk_trn_runtime.contract import (
    OUTPUT_CODE_ARCHIVE_BUCKET,
    RESEARCHER_ACTIONS,
    RESEARCHER_SHELL,
    SLURM_CONTROLLER_CONTAINER,
    researcher_document,
)

__all__ = ["ResearcherAccess"]


class ResearcherAccess(Construct):
    """The cluster's ``cdk-trn`` documents (see the module docstring).

    :param cluster_name: the TrainiumCluster's name (documents are named after it).
    :param job_user: the Slurm job user every document acts as.
    :param shared_root: the shared file system's mount path (the job user's home is under it).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        job_user: str,
        shared_root: str,
        container: str = SLURM_CONTROLLER_CONTAINER,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self._where = {"container": container, "job_user": job_user, "shared_root": shared_root}
        #: Where ``cdk-trn submit --code`` uploads code archives (None: no archives).
        self.code_bucket: s3.IBucket | None = None
        documents = command_documents(**self._where)
        #: The Command documents by action.
        self.documents: dict[str, ssm.CfnDocument] = {}
        for action in RESEARCHER_ACTIONS:
            self.documents[action] = self._document(action, "Command", documents[action].content())
        #: The Session document of ``cdk-trn shell``.
        self.shell = self._document(
            RESEARCHER_SHELL,
            "Session",
            session_document(container=container, job_user=job_user, shared_root=shared_root),
        )

    def _document(self, action: str, kind: str, content: dict[str, Any]) -> ssm.CfnDocument:
        return ssm.CfnDocument(
            self,
            action.capitalize(),
            name=researcher_document(self.cluster_name, action),
            document_type=kind,
            document_format="JSON",
            content=content,
            # A changed script becomes the default version of the same name, which the
            # researchers' policies name. Earlier versions stay runnable by an explicit
            # DocumentVersion: "Replace" would retire them, but CloudFormation cannot replace a
            # custom-named resource in place ("Rename ... and update the stack again"), and the
            # names are fixed (contract.researcher_document). So a fix to a document's script
            # must also hold against its old versions (e.g. an allowedPattern tightened in a new
            # version leaves the old one's in force): the README's "Security" section says so.
            update_method="NewVersion",
        )

    def allow_code_archives(self, bucket: s3.IBucket, reader: iam.Role) -> None:
        """Let ``submit`` take a code archive (``code/<name>.tar.gz`` in ``bucket``, uploaded by
        ``cdk-trn submit --code DIR``): ``reader`` (the controller's role, root on the
        controller) fetches it, the job user unpacks it beside the job script; sbatch runs
        there. Researchers then also need ``s3:PutObject`` on ``code/*``.

        A bucket of this stack becomes the stack output ``cdk-trn submit --code`` uploads to
        (``contract.OUTPUT_CODE_ARCHIVE_BUCKET``). A bucket of another stack does not (an output
        that re-exports another stack's export is what cfn-lint's W6001 warns of): the command
        then uses the ``DatasetBucketName`` output of the ``<prefix>-storage`` stack beside a
        ``<prefix>-cluster`` stack, the default app's layout."""
        if self.code_bucket is not None:
            raise CdkTrnError(
                f"{self.node.path}: allow_code_archives was called already (code archives go to "
                "one bucket)"
            )
        self.code_bucket = bucket
        submit = command_documents(
            **self._where, code_bucket=bucket.bucket_name, region=cdk.Stack.of(self).region
        )["submit"]
        self.documents["submit"].content = submit.content()
        archives = bucket.arn_for_objects(f"{CODE_PREFIX}*")
        iam.Grant.add_to_principal(
            grantee=reader, actions=["s3:GetObject"], resource_arns=[archives]
        )
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_decrypt(reader)
        acknowledge_wildcards(
            reader,
            "the controller reads the code archives researchers upload under code/ (their "
            "names are known only at submit time), nothing else of the bucket",
            resources=[archives],
        )
        if cdk.Stack.of(bucket).node.path != cdk.Stack.of(self).node.path:
            return
        add_outputs(
            self,
            [
                (
                    OUTPUT_CODE_ARCHIVE_BUCKET,
                    bucket.bucket_name,
                    "bucket cdk-trn submit --code uploads code archives to (under code/)",
                )
            ],
        )

    @property
    def document_names(self) -> list[str]:
        """Every document's name: what a researcher's policy grants and nothing more."""
        return [researcher_document(self.cluster_name, a) for a in RESEARCHER_ACTIONS] + [
            researcher_document(self.cluster_name, RESEARCHER_SHELL)
        ]
