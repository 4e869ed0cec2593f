"""EnclaveKeyVault: a KMS key only an attested Nitro Enclave can use, and the hosts that run it.

Owns the vault's resources: the KMS key and its policy (cryptographic use only with an attestation
whose PCR0, and PCR8 for signed images, match the image; an explicit Deny for every principal when
the attestation is absent, and on grants and re-encryption always), the enclave hosts (an Auto
Scaling group of enclave-capable instances with ``EnclaveOptions``, IMDSv2, no public IP, encrypted
root volume), their role, security group and boot script (``host_bootstrap.sh``), the state
bucket that keeps the signing key's ciphertext, the SSM parameter name under which the host
publishes the manifest-signing public key, and the SSM parameters in which the hosts publish their
URL for the client clusters' nodes (``contract.vault_url_parameter``).

The enclave hosts run beside the Trainium nodes, not on them: enclaves cannot reach Trainium or
EFA, and Trn1/Trn1n cannot host enclaves (see FACTS.md "Nitro Enclaves"). Policy facts: AWS KMS
developer guide, "Condition keys for AWS Nitro Enclaves" (``kms:RecipientAttestation:ImageSha384``
and ``kms:RecipientAttestation:PCR<n>``); aws-nitro-enclaves-sdk-c issue 100 (an unconditioned Allow
defeats attestation, hence the Deny).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aws_cdk as cdk
import jsii
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._boot import BootBundle
from cdk_trn._outputs import add_outputs, claim_stack
from cdk_trn._provider import DeployTimeNetwork
from cdk_trn._resources import (
    ManagedPolicyRole,
    access_log_bucket,
    allow_cloudwatch_logs,
    deliver_access_logs,
    encrypted_bucket,
    stateful_removal_policy,
    validate_access_log_bucket,
    validate_access_log_prefix,
)
from cdk_trn.catalog import HostSpec, enclave_host_spec
from cdk_trn.compliance import (
    acknowledge,
    acknowledge_regulated,
)
from cdk_trn.enclave.image import BoundEnclaveImage, EnclaveImage
from cdk_trn.errors import invalid
from cdk_trn.interfaces import ITrainingNetwork
from cdk_trn_runtime.contract import (
    OUTPUT_VAULT_IMAGE_PCR0,
    OUTPUT_VAULT_KEY_ARN,
    OUTPUT_VAULT_URL_PARAMETER,
    VAULT_DISCOVERY_TAG,
    VAULT_URL_PENDING,
)

#: Operations that honour the ``kms:RecipientAttestation:*`` condition keys (KMS developer guide).
#: ``kms:GenerateRandom`` is not scoped to a key: a key policy cannot grant it, but listing it keeps
#: the Deny and the Allow symmetric with the documented set.
CRYPTO_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
)
#: Key administration without any cryptographic use and without kms:CreateGrant (a grant could hand
#: Decrypt to another principal).
ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)
#: Changing the key policy could drop the Deny statements; only the deployment's CloudFormation
#: execution role and the break-glass role may, and every attempt notifies the alerts topic.
KEY_POLICY_ACTION = "kms:PutKeyPolicy"
#: The CDK bootstrap's default qualifier (``cdk bootstrap`` without ``--qualifier``).
DEFAULT_BOOTSTRAP_QUALIFIER = "hnb659fds"
#: Denied to every principal without condition: the enclave needs neither, a grant could hand
#: Decrypt to another principal, and ReEncrypt would move the ciphertext under another key.
DENIED_TO_EVERYONE_ACTIONS = ("kms:CreateGrant", "kms:ReEncrypt*")
IMAGE_SHA384 = "kms:RecipientAttestation:ImageSha384"
PCR8 = "kms:RecipientAttestation:PCR8"

#: Where the state bucket's server access logs go in their bucket, by default.
STATE_ACCESS_LOG_PREFIX = "vault-state/"
ENCLAVE_CID = 16  # fixed so the parent server knows where to forward
KMS_PROXY_VSOCK_PORT = 8000  # vsock-proxy's port on the parent (CID 3)
PARENT_RESERVED_VCPUS = 2
PARENT_RESERVED_MIB = 2048
MIN_ENCLAVE_MEMORY_MIB = 512
MAX_HOSTS = 8
#: The parent server's key state (KMS ciphertext of the signing key + public key; nothing secret).
KEY_STATE_OBJECT = "signing-key/key-state.json"
PURPOSE_TAG = ("cdk-trn:purpose", "enclave")
DISCOVERY_TAG_KEY = VAULT_DISCOVERY_TAG
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


class VaultClient(Protocol):
    """What a vault client offers: a network identity and an IAM identity (e.g. TrainiumCluster)."""

    @property
    def connections(self) -> ec2.Connections: ...

    @property
    def role(self) -> iam.IRole: ...


@dataclass(frozen=True)
class VaultEndpoint:
    """How clients reach the vault: the hosts of this group, tagged for discovery, on ``port``.

    No load balancer: the host security group admits only the clients' security groups, which a
    load balancer in between would blur; clients find hosts by the discovery tag (or the group).
    """

    auto_scaling_group_name: str
    port: int
    discovery_tag_key: str
    discovery_tag_value: str


class EnclaveKeyVault(Construct):
    """Enclave hosts plus a KMS key usable only from the attested enclave image.

    :param network: the hosts' network (the cluster's: ``cluster.network``); they run in its
        node subnet, private, with VPC endpoints for KMS, STS, SSM and CloudFormation and an S3
        gateway endpoint (no internet path is needed).
    :param clients: who may call the vault (objects with ``connections`` and ``role``, such as
        ``TrainiumCluster``); their security groups get the service port, their roles are the
        identities the parent server accepts. A client with ``vault_url_parameter`` (a
        ``TrainiumCluster``: ``/cdk-trn/<cluster name>/vault-url``, which its nodes may read)
        gets the vault's URL published there; the others share one under the vault's path.
    :param image: the enclave image (``EnclaveImage.from_measurements`` or ``from_directory``).
    :param instance_type: enclave-capable host type from ``cdk_trn.catalog.ENCLAVE_HOST_SPECS``.
        Default: ``m7i.xlarge`` (4 vCPUs: 2 for the enclave, 2 for the parent).
    :param enclave_cpu_count: vCPUs given to the enclave; even (whole cores), leaving 2 to the
        parent. Default: 2.
    :param enclave_memory_mib: memory given to the enclave, 512 MiB up to the host's memory less
        2048 MiB. Default: 4096.
    :param port: TCP port of the parent server, 1024-65535. Default: 8443.
    :param hosts: number of enclave hosts, 1-8. Default: 1.
    :param key_admins: principals that administer the key (no cryptographic use, no policy
        changes). Default: none besides IAM administration through the account (also without
        cryptographic use or policy changes).
    :param deployment_role_arn: the role CloudFormation deploys this stack with, the only
        principal besides the break-glass role that may change the key policy. Default: the
        CDK bootstrap's execution role of this stack's synthesizer
        (``cdk-hnb659fds-cfn-exec-role-<account>-<region>`` unless bootstrapped with another
        qualifier).
    :param break_glass_role_arn: an IAM role ARN that may also change the key policy, for
        recovery. Default: none.
    :param destroy_on_delete: the explicit opt-out from retention: delete the KMS keys (after
        KMS's waiting period) and the state bucket (only when empty) with the stack.
        Default: False (retained on stack delete).
    :param machine_image: host AMI (Amazon Linux 2023 is assumed by the boot script). Default: the
        latest AL2023 from its public SSM parameter, resolved at deploy time.
    :param access_log_bucket: where the state bucket's S3 server access logs go, for example the
        storage stack's ``TrainingBuckets.access_log_bucket``. S3 requires the destination to be
        in the same Region and account, encrypted with SSE-S3 (not SSE-KMS), without Object Lock
        default retention or Requester Pays; with ACLs disabled its bucket policy must admit
        ``logging.s3.amazonaws.com`` for ``access_log_prefix``: a bucket of this stack gets that
        statement from the vault, any other bucket's owner adds it
        (``TrainingBuckets.admit_access_logs(access_log_prefix)``). Default: a new SSE-S3 bucket
        of the vault, retained like the state bucket, logs kept 365 days.
    :param access_log_prefix: key prefix of the state bucket's access logs in that bucket.
        Default: ``vault-state/`` (:data:`STATE_ACCESS_LOG_PREFIX`).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        network: ITrainingNetwork,
        clients: Sequence[VaultClient],
        image: EnclaveImage,
        instance_type: str = "m7i.xlarge",
        enclave_cpu_count: int = 2,
        enclave_memory_mib: int = 4096,
        port: int = 8443,
        hosts: int = 1,
        key_admins: Sequence[iam.IPrincipal] = (),
        deployment_role_arn: str | None = None,
        break_glass_role_arn: str | None = None,
        destroy_on_delete: bool = False,
        machine_image: ec2.IMachineImage | None = None,
        access_log_bucket: s3.IBucket | None = None,
        access_log_prefix: str = STATE_ACCESS_LOG_PREFIX,
    ) -> None:
        spec = self._validate_instance_type(instance_type)
        validate_access_log_prefix("access_log_prefix", access_log_prefix)
        if access_log_bucket is not None:
            validate_access_log_bucket("access_log_bucket", scope, access_log_bucket)
        self._validate_cpu_count(spec, enclave_cpu_count)
        self._validate_memory(spec, enclave_memory_mib)
        self._validate_port(port)
        self._validate_hosts(hosts)
        self._validate_clients(clients)
        self._validate_image(image)
        removal_policy = stateful_removal_policy(destroy_on_delete)
        for prop, arn in (
            ("deployment_role_arn", deployment_role_arn),
            ("break_glass_role_arn", break_glass_role_arn),
        ):
            self._validate_role_arn(prop, arn)
        #: The roles that may change the key policy: the deployment's and the break-glass one.
        self.key_policy_roles = [
            deployment_role_arn or self._bootstrap_execution_role(cdk.Stack.of(scope)),
            *([break_glass_role_arn] if break_glass_role_arn else []),
        ]
        super().__init__(scope, id)
        claim_stack(
            self,
            "EnclaveKeyVault",
            "cdk-trn vault-key and verify read a vault by its stack's outputs "
            "(VaultImagePcr0, ...)",
        )
        vpc, subnet = network.vpc, network.subnet
        stack = cdk.Stack.of(self)
        self.spec = spec
        #: Number of enclave hosts (the cost summary prices them).
        self.hosts = hosts
        self.port = port
        self.enclave_cpu_count = enclave_cpu_count
        self.enclave_memory_mib = enclave_memory_mib
        self.public_key_parameter = (
            f"/cdk-trn/enclave/{cdk.Names.unique_id(self)}/manifest-public-key"
        )

        self.storage_key = self._storage_key(removal_policy)
        self.state_bucket = self._state_bucket(removal_policy, access_log_bucket, access_log_prefix)
        self.image: BoundEnclaveImage = image.bind(
            self,
            bucket=self.state_bucket,
            encryption_key=self.storage_key,
            vpc=vpc,
            subnet=subnet,
        )

        #: Its statements (and any grant to it) live in its customer-managed policy.
        self.host_role = ManagedPolicyRole(
            self,
            "HostRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Enclave vault host: fetches the EIF, relays KMS for the enclave",
        )
        self.key = kms.Key(
            self,
            "Key",
            description="cdk-trn enclave key: usable only from the attested enclave image",
            enable_key_rotation=True,
            removal_policy=removal_policy,
            policy=self._key_policy(list(key_admins)),
        )
        cdk.Tags.of(self.key).add(*PURPOSE_TAG)
        self.key_policy_alerts = self._alert_on_key_policy_changes(removal_policy)

        self.security_group = ec2.SecurityGroup(
            self,
            "HostSecurityGroup",
            vpc=vpc,
            allow_all_outbound=False,
            description="Enclave vault hosts: service port from clients only; HTTPS to endpoints",
        )
        self._connections = ec2.Connections(
            security_groups=[self.security_group], default_port=ec2.Port.tcp(port)
        )
        for client in clients:
            self._connections.allow_default_port_from(
                client.connections, "cdk-trn vault client to the enclave parent server"
            )
        self._restrict_egress(vpc, subnet)

        #: The hosts' boot bundle (boot script, units and the parent server's code: the vault and
        #: enclave subpackages of cdk_trn_runtime), checked by its SHA-256 at boot, and the hosts'
        #: boot log group under the storage key.
        self.boot = BootBundle(
            self,
            "Boot",
            role="vault",
            encryption_key=self.storage_key,
            removal_policy=removal_policy,
        )
        #: Where the hosts publish their URL: per client cluster, the parameter that cluster's
        #: nodes may read (``TrainiumCluster.vault_url_parameter``).
        self.url_parameter_names = sorted(
            {
                name
                for client in clients
                if isinstance(name := getattr(client, "vault_url_parameter", None), str)
            }
        ) or [f"/cdk-trn/enclave/{cdk.Names.unique_id(self)}/vault-url"]
        self.url_parameters = self._url_parameters(self.url_parameter_names)
        self._grant_host_access(stack)

        user_data = ec2.UserData.custom(cdk.Lazy.string(_HostUserData(self, stack, clients)))
        self.launch_template = ec2.LaunchTemplate(
            self,
            "HostTemplate",
            instance_type=ec2.InstanceType(instance_type),
            machine_image=machine_image or ec2.MachineImage.latest_amazon_linux2023(),
            role=self.host_role,
            security_group=self.security_group,
            user_data=user_data,
            nitro_enclave_enabled=True,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            associate_public_ip_address=False,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        20,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "Hosts",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            launch_template=self.launch_template,
            min_capacity=hosts,
            max_capacity=hosts,
            signals=autoscaling.Signals.wait_for_all(timeout=cdk.Duration.minutes(30)),
            # A new image or boot script replaces the whole group only after the new hosts
            # signalled a running enclave; the old ones keep serving until then.
            update_policy=autoscaling.UpdatePolicy.replacing_update(),
        )
        # A host overwrites the parameters CloudFormation created; it must not create them first.
        for parameter in self.url_parameters:
            self.auto_scaling_group.node.add_dependency(parameter)
        discovery_value = cdk.Names.unique_id(self)
        cdk.Tags.of(self.auto_scaling_group).add(DISCOVERY_TAG_KEY, discovery_value)
        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-AS3",
            "Fixed-size group (min = max = hosts) changed only by CloudFormation replacing "
            "updates; its events are in the stack events and CloudTrail, so no SNS topic.",
        )
        self.endpoint = VaultEndpoint(
            auto_scaling_group_name=self.auto_scaling_group.auto_scaling_group_name,
            port=port,
            discovery_tag_key=DISCOVERY_TAG_KEY,
            discovery_tag_value=discovery_value,
        )
        #: The stack outputs ``cdk-trn vault-key`` and ``cdk-trn verify`` read (contract keys).
        self.outputs = add_outputs(
            self,
            [
                (OUTPUT_VAULT_IMAGE_PCR0, self.image.pcr0, "PCR0 (SHA-384) of the enclave image"),
                (
                    OUTPUT_VAULT_KEY_ARN,
                    self.key.key_arn,
                    "KMS key the enclave's signing key comes from",
                ),
                (
                    OUTPUT_VAULT_URL_PARAMETER,
                    self.url_parameters[0].parameter_name,
                    "SSM parameter holding the vault's URL (http://<host>:<port>), read by the "
                    "nodes",
                ),
            ],
        )

    # --- validation (before any resource exists) -------------------------------------------

    @staticmethod
    def _validate_role_arn(prop: str, arn: str | None) -> None:
        if arn is None or cdk.Token.is_unresolved(arn):
            return
        if not _ROLE_ARN.match(arn):
            raise invalid(prop, arn, "an IAM role ARN (arn:aws:iam::<account>:role/<name>)")

    @staticmethod
    def _bootstrap_execution_role(stack: cdk.Stack) -> str:
        synthesizer = stack.synthesizer
        if not isinstance(synthesizer, cdk.DefaultStackSynthesizer):
            raise invalid(
                "deployment_role_arn",
                None,
                "the ARN of the role CloudFormation deploys this stack with (the stack's "
                f"synthesizer, {type(synthesizer).__name__}, names no bootstrap execution role)",
            )
        # e.g. arn:${AWS::Partition}:iam::${AWS::AccountId}:role/cdk-hnb659fds-cfn-exec-role-...
        return cdk.Fn.sub(synthesizer.cloud_formation_execution_role_arn)

    @staticmethod
    def _validate_instance_type(instance_type: str) -> HostSpec:
        # The catalog's enclave hosts have at least 4 vCPUs: 2 for the enclave, 2 for the parent.
        return enclave_host_spec(instance_type)

    @staticmethod
    def _validate_cpu_count(spec: HostSpec, cpu_count: int) -> None:
        high = spec.vcpus - PARENT_RESERVED_VCPUS
        if not isinstance(cpu_count, int) or cpu_count < 2 or cpu_count > high or cpu_count % 2:
            raise invalid(
                "enclave_cpu_count",
                cpu_count,
                f"an even number from 2 to {high} on {spec.instance_type} (whole cores; "
                f"{PARENT_RESERVED_VCPUS} vCPUs stay with the parent)",
            )

    @staticmethod
    def _validate_memory(spec: HostSpec, memory_mib: int) -> None:
        high = spec.memory_gib * 1024 - PARENT_RESERVED_MIB
        if not isinstance(memory_mib, int) or not MIN_ENCLAVE_MEMORY_MIB <= memory_mib <= high:
            raise invalid(
                "enclave_memory_mib",
                memory_mib,
                f"{MIN_ENCLAVE_MEMORY_MIB} to {high} MiB on {spec.instance_type} "
                f"({PARENT_RESERVED_MIB} MiB stay with the parent)",
            )

    @staticmethod
    def _validate_port(port: int) -> None:
        if not isinstance(port, int) or not 1024 <= port <= 65535:
            raise invalid("port", port, "a TCP port from 1024 to 65535 (the server is not root)")

    @staticmethod
    def _validate_hosts(hosts: int) -> None:
        if not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
            raise invalid("hosts", hosts, f"1 to {MAX_HOSTS}")

    @staticmethod
    def _validate_clients(clients: Sequence[Any]) -> None:
        if not clients:
            raise invalid("clients", list(clients), "at least one client (e.g. the cluster)")
        for client in clients:
            if not hasattr(client, "connections") or not hasattr(client, "role"):
                raise invalid(
                    "clients", client, "objects with .connections and .role (e.g. TrainiumCluster)"
                )

    @staticmethod
    def _validate_image(image: Any) -> None:
        if not isinstance(image, EnclaveImage):
            raise invalid(
                "image", image, "an EnclaveImage (from_measurements(...) or from_directory(...))"
            )

    # --- resources ---------------------------------------------------------------------------

    @property
    def connections(self) -> ec2.Connections:
        return self._connections

    def _storage_key(self, removal_policy: cdk.RemovalPolicy) -> kms.Key:
        key = kms.Key(
            self,
            "StorageKey",
            description="cdk-trn enclave vault storage: state bucket, EIF build and its logs",
            enable_key_rotation=True,
            removal_policy=removal_policy,
            policy=iam.PolicyDocument(statements=self._account_key_policy()),
        )
        # CloudWatch Logs encrypts the build's log groups with this key.
        allow_cloudwatch_logs(key)
        return key

    def _state_bucket(
        self,
        removal_policy: cdk.RemovalPolicy,
        logs_to: s3.IBucket | None,
        log_prefix: str,
    ) -> s3.Bucket:
        created: list[s3.Bucket] = []
        if logs_to is None:
            logs_to = access_log_bucket(
                self,
                "AccessLogs",
                expiration=cdk.Duration.days(365),
                removal_policy=removal_policy,
                serves="the vault state bucket",
            )
            created.append(logs_to)
        #: Where the state bucket's server access logs go (given, or the vault's own).
        self.access_log_bucket: s3.IBucket = logs_to
        # Versioned: the hosts may overwrite the key state; versions keep every earlier one.
        state = encrypted_bucket(
            self,
            "State",
            key=self.storage_key,
            removal_policy=removal_policy,
        )
        deliver_access_logs(
            state, to=logs_to, prefix=log_prefix, sid="S3ServerAccessLogsOfVaultState"
        )
        for bucket in (*created, state):
            acknowledge_regulated(
                bucket,
                "S3BucketReplicationEnabled",
                "cross-region replication needs a destination bucket and key in a second region, "
                "which this single-region stack cannot create; the state is versioned and retained",
            )
        return state

    def _url_parameters(self, names: Sequence[str]) -> list[ssm.StringParameter]:
        """One String parameter per client cluster (clients without ``vault_url_parameter``
        share one under this vault's own path). CloudFormation creates each with a placeholder
        and deletes it with the vault; each host writes ``http://<its private IP>:<port>`` when
        it has started, so the parameter names the host that started last (all hosts sign with
        the one stored key). Its properties never change, so an update never resets it."""
        return [
            ssm.StringParameter(
                self,
                "UrlParameter" if index == 0 else f"UrlParameter{index + 1}",
                parameter_name=name,
                string_value=VAULT_URL_PENDING,
                description="URL of the cdk-trn enclave vault (written by its hosts at start)",
                tier=ssm.ParameterTier.STANDARD,
            )
            for index, name in enumerate(names)
        ]

    def _policy_change_statements(self) -> list[iam.PolicyStatement]:
        """PutKeyPolicy for the deployment and break-glass roles only, denied to all others."""
        policy_roles = {"aws:PrincipalArn": self.key_policy_roles}
        return [
            iam.PolicyStatement(
                sid="OnlyDeploymentAndBreakGlassRolesChangeKeyPolicy",
                principals=[iam.AccountRootPrincipal()],
                actions=[KEY_POLICY_ACTION],
                resources=["*"],
                conditions={"ArnEquals": policy_roles},
            ),
            # Whatever IAM or a future statement allows: nobody else rewrites the policy.
            _deny_everyone(
                "DenyKeyPolicyChangesToOtherPrincipals",
                [KEY_POLICY_ACTION],
                {"ArnNotEquals": policy_roles},
            ),
        ]

    def _account_key_policy(self) -> list[iam.PolicyStatement]:
        """The vault's supporting keys (storage, alerts): the account's IAM policies govern
        every use as with a default key policy, except changing the policy itself."""
        return [
            iam.PolicyStatement(
                sid="AccountUsesKeyThroughIamExceptPolicyChanges",
                principals=[iam.AccountRootPrincipal()],
                not_actions=[KEY_POLICY_ACTION],
                resources=["*"],
            ),
            *self._policy_change_statements(),
        ]

    def _key_policy(self, key_admins: list[iam.IPrincipal]) -> iam.PolicyDocument:
        image = self.image
        allow_conditions: dict[str, str] = {IMAGE_SHA384: image.pcr0}
        if image.pcr8 is not None:
            allow_conditions[PCR8] = image.pcr8
        change_policy, deny_policy_changes = self._policy_change_statements()
        statements = [
            iam.PolicyStatement(
                sid="AccountAdministersKeyWithoutCryptographicUse",
                principals=[iam.AccountRootPrincipal()],
                actions=list(ADMIN_ACTIONS),
                resources=["*"],
            ),
            change_policy,
            iam.PolicyStatement(
                sid="EnclaveHostUsesKeyOnlyFromAttestedEnclave",
                principals=[iam.ArnPrincipal(self.host_role.role_arn)],
                actions=list(CRYPTO_ACTIONS),
                resources=["*"],
                conditions={"StringEqualsIgnoreCase": allow_conditions},
            ),
            _deny_everyone(
                "DenyCryptographicUseWithoutAttestation",
                CRYPTO_ACTIONS,
                {"Null": {IMAGE_SHA384: "true"}},
            ),
            # Also closes grants and IAM policies: any use must come from this exact image.
            _deny_everyone(
                "DenyCryptographicUseFromOtherImages",
                CRYPTO_ACTIONS,
                {"StringNotEqualsIgnoreCase": {IMAGE_SHA384: image.pcr0}},
            ),
            _deny_everyone("DenyGrantsAndReEncryptionToEveryone", DENIED_TO_EVERYONE_ACTIONS),
            deny_policy_changes,
        ]
        if image.pcr8 is not None:
            statements.append(
                _deny_everyone(
                    "DenyCryptographicUseFromOtherSigners",
                    CRYPTO_ACTIONS,
                    {"StringNotEqualsIgnoreCase": {PCR8: image.pcr8}},
                )
            )
        if key_admins:
            statements.insert(
                2,
                iam.PolicyStatement(
                    sid="KeyAdministratorsWithoutCryptographicUse",
                    principals=key_admins,
                    actions=list(ADMIN_ACTIONS),
                    resources=["*"],
                ),
            )
        return iam.PolicyDocument(statements=statements)

    def _alert_on_key_policy_changes(self, removal_policy: cdk.RemovalPolicy) -> sns.Topic:
        """An EventBridge rule on CloudTrail's PutKeyPolicy for the vault key (allowed or
        denied) that notifies an encrypted SNS topic; subscribe the security team to it.

        EventBridge sees CloudTrail management events only where a trail records them (an
        account or organisation trail); it cannot publish to a topic under the AWS-managed SNS
        key, hence a customer-managed key.
        """
        alerts_key = kms.Key(
            self,
            "AlertsKey",
            description="cdk-trn enclave vault: encrypts the key-policy alerts topic",
            enable_key_rotation=True,
            removal_policy=removal_policy,
            policy=iam.PolicyDocument(statements=self._account_key_policy()),
        )
        topic = sns.Topic(
            self,
            "KeyPolicyAlerts",
            display_name="cdk-trn enclave vault key policy changes",
            master_key=alerts_key,
            enforce_ssl=True,
        )
        rule = events.Rule(
            self,
            "KeyPolicyChangeRule",
            description="Any attempt to change the enclave vault key's policy (CloudTrail)",
            event_pattern=events.EventPattern(
                source=["aws.kms"],
                detail_type=["AWS API Call via CloudTrail"],
                detail={
                    "eventSource": ["kms.amazonaws.com"],
                    "eventName": [KEY_POLICY_ACTION.removeprefix("kms:")],
                    # Denied calls may carry no resources; their request still names the key.
                    "$or": [
                        {"resources": {"ARN": [self.key.key_arn]}},
                        {"requestParameters": {"keyId": [self.key.key_arn, self.key.key_id]}},
                    ],
                },
            ),
        )
        rule.add_target(events_targets.SnsTopic(topic))
        # The SnsTopic target grants EventBridge kms:Decrypt / GenerateDataKey* on this key.
        return topic

    def _restrict_egress(self, vpc: ec2.IVpc, subnet: ec2.ISubnet) -> None:
        https = ec2.Port.tcp(443)
        self.security_group.add_egress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block),
            https,
            "Interface endpoints: KMS (vsock-proxy), STS (caller checks), SSM, CloudFormation",
        )
        # S3 (EIF, package, dnf repositories) goes through the gateway endpoint, whose addresses
        # are the regional managed prefix list; its id differs per region and is looked up at
        # deploy time (a synth-time lookup is not allowed), once per stack and subnet for every
        # deploy-time function there.
        placement = DeployTimeNetwork.of(
            self, vpc=vpc, subnet=subnet, encryption_key=self.storage_key
        )
        self.s3_prefix_list_id = placement.s3_prefix_list_id
        self.security_group.add_egress_rule(
            ec2.Peer.prefix_list(self.s3_prefix_list_id),
            https,
            "S3 gateway endpoint: EIF, boot bundle, AL2023 package repositories",
        )

    def _grant_host_access(self, stack: cdk.Stack) -> None:
        image = self.image
        statements = [
            iam.PolicyStatement(
                sid="ReadEnclaveImageAndBootBundle",
                actions=["s3:GetObject"],
                resources=[image.eif.bucket.arn_for_objects(image.eif.key), self.boot.object_arn],
            ),
            iam.PolicyStatement(
                sid="WriteBootLog",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.boot.log_group.log_group_arn],
            ),
            iam.PolicyStatement(
                sid="KeepKeyState",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[self.state_bucket.arn_for_objects(KEY_STATE_OBJECT)],
            ),
            # Lets HeadObject answer 404 (not 403) for a missing key state on a first start.
            iam.PolicyStatement(
                sid="TellMissingKeyStateFromDenied",
                actions=["s3:ListBucket"],
                resources=[self.state_bucket.bucket_arn],
            ),
            iam.PolicyStatement(
                sid="StateBucketEncryptionThroughS3",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[self.storage_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            ),
            iam.PolicyStatement(
                sid="PublishManifestSigningPublicKey",
                actions=["ssm:PutParameter", "ssm:GetParameter"],
                resources=[self._parameter_arn()],
            ),
            # The statement the Auto Scaling group's signals add too, written alike (no Sid), so
            # the policy holds it once.
            iam.PolicyStatement(
                actions=["cloudformation:SignalResource"], resources=[cdk.Aws.STACK_ID]
            ),
            iam.PolicyStatement(
                sid="PublishVaultUrl",
                actions=["ssm:PutParameter"],
                resources=[self._parameter_arn(name) for name in self.url_parameter_names],
            ),
        ]
        eif_key = image.eif.bucket.encryption_key
        if eif_key is not None and eif_key is not self.storage_key:
            statements.append(
                iam.PolicyStatement(
                    sid="EnclaveImageBucketEncryption",
                    actions=["kms:Decrypt"],
                    resources=[eif_key.key_arn],
                    conditions={
                        "StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}
                    },
                )
            )
        # Into the role's managed policy, under the role: the launch template depends on the
        # role, so no host boots before its permissions exist.
        for statement in statements:
            self.host_role.add_to_principal_policy(statement)

    def _parameter_arn(self, name: str | None = None) -> str:
        return cdk.Stack.of(self).format_arn(
            service="ssm",
            resource="parameter",
            resource_name=(name or self.public_key_parameter).lstrip("/"),
        )

    def grant_read_public_key(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read the manifest-signing public key from its SSM parameter."""
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["ssm:GetParameter"], resource_arns=[self._parameter_arn()]
        )

    # --- boot script ---------------------------------------------------------------------------

    def _user_data(self, stack: cdk.Stack, clients: Sequence[VaultClient]) -> str:
        """The hosts' user data: the launcher of their boot bundle with the variables
        ``host_bootstrap.sh`` checks."""
        asg = self.auto_scaling_group.node.default_child
        assert isinstance(asg, autoscaling.CfnAutoScalingGroup)
        return self.boot.user_data(
            {
                "CDK_TRN_REGION": stack.region,
                "CDK_TRN_STACK": stack.stack_name,
                "CDK_TRN_RESOURCE": stack.get_logical_id(asg),
                "CDK_TRN_EIF_BUCKET": self.image.eif.bucket.bucket_name,
                "CDK_TRN_EIF_KEY": self.image.eif.key,
                "CDK_TRN_EXPECTED_PCR0": self.image.pcr0,
                "CDK_TRN_ENCLAVE_CPU_COUNT": self.enclave_cpu_count,
                "CDK_TRN_ENCLAVE_MEMORY_MIB": self.enclave_memory_mib,
                "CDK_TRN_ENCLAVE_CID": ENCLAVE_CID,
                "CDK_TRN_KMS_PROXY_PORT": KMS_PROXY_VSOCK_PORT,
                "CDK_TRN_SERVICE_PORT": self.port,
                "CDK_TRN_KMS_KEY_ARN": self.key.key_arn,
                # A client's signing role when it has one (TrainiumCluster.signer_role: only
                # the nodes' root signing agents assume it), else its role.
                "CDK_TRN_ALLOWED_ROLE_ARNS": cdk.Fn.join(
                    " ",
                    [getattr(client, "signer_role", client.role).role_arn for client in clients],
                ),
                # Connection slots for every client node (TrainiumCluster.nodes) and a reserve.
                "CDK_TRN_MAX_CLIENTS": sum(
                    int(getattr(client, "nodes", 0) or 0) for client in clients
                ),
                "CDK_TRN_STATE_BUCKET": self.state_bucket.bucket_name,
                "CDK_TRN_KEY_STATE_OBJECT": KEY_STATE_OBJECT,
                "CDK_TRN_PUBLIC_KEY_PARAMETER": self.public_key_parameter,
                "CDK_TRN_URL_PARAMETERS": " ".join(self.url_parameter_names),
            }
        )


@jsii.implements(cdk.IStableStringProducer)
class _HostUserData:
    """The hosts' user data, rendered at synth (the group's logical id is known by then)."""

    def __init__(
        self, vault: EnclaveKeyVault, stack: cdk.Stack, clients: Sequence[VaultClient]
    ) -> None:
        self._vault = vault
        self._stack = stack
        self._clients = list(clients)

    def produce(self) -> str:
        return self._vault._user_data(self._stack, self._clients)


__all__ = [
    "ADMIN_ACTIONS",
    "CRYPTO_ACTIONS",
    "STATE_ACCESS_LOG_PREFIX",
    "EnclaveKeyVault",
    "VaultClient",
    "VaultEndpoint",
]


def _deny_everyone(
    sid: str, actions: Sequence[str], conditions: dict[str, Any] | None = None
) -> iam.PolicyStatement:
    """A key-policy Deny that binds every principal, administrators and grants included."""
    return iam.PolicyStatement(
        sid=sid,
        effect=iam.Effect.DENY,
        principals=[iam.AnyPrincipal()],
        actions=list(actions),
        resources=["*"],
        conditions=conditions,
    )
