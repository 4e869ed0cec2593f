"""EnclaveKeyVault: a KMS key only an attested Nitro Enclave can use, and the hosts that run it.

Owns the vault's resources: the KMS key and its policy (:mod:`~cdk_trn.enclave.key_policy`:
cryptographic use only with an attestation whose PCR0, and PCR8 for signed images, match the
image; an explicit Deny for every principal when the attestation is absent, and on grants and
re-encryption always) and the alerts on changes to it (:mod:`~cdk_trn.enclave.key_policy_alerts`),
the enclave hosts (an Auto Scaling group of enclave-capable instances with ``EnclaveOptions``,
IMDSv2, no public IP, encrypted root volume), their role and security group
(:mod:`~cdk_trn.enclave.vault_host`) and boot script (:mod:`~cdk_trn.enclave.vault_boot`,
``host_bootstrap.sh``), the storage key and the state bucket that keeps the signing key's
ciphertext (:mod:`~cdk_trn.enclave.vault_state`), the SSM parameter name under which the host
publishes the manifest-signing public key, and the SSM parameters in which the hosts publish their
URL for the client clusters' nodes (``contract.vault_url_parameter``). Its props are checked by
:mod:`~cdk_trn.enclave.vault_props` before any resource exists.

The enclave hosts run beside the Trainium nodes, not on them: enclaves cannot reach Trainium or
EFA, and Trn1/Trn1n cannot host enclaves (see FACTS.md "Nitro Enclaves").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._boot import BootBundle
from cdk_trn._outputs import add_outputs, claim_stack
from cdk_trn._resources import (
    ManagedPolicyRole,
    stateful_removal_policy,
    validate_access_log_bucket,
    validate_access_log_prefix,
)
from cdk_trn.compliance import acknowledge
from cdk_trn.enclave.image import BoundEnclaveImage, EnclaveImage
from cdk_trn.enclave.key_policy import ADMIN_ACTIONS, CRYPTO_ACTIONS, enclave_key_policy
from cdk_trn.enclave.key_policy_alerts import alert_on_key_policy_changes
from cdk_trn.enclave.vault_boot import HostUserData
from cdk_trn.enclave.vault_host import grant_host_access, restrict_host_egress
from cdk_trn.enclave.vault_props import (
    bootstrap_execution_role,
    validate_clients,
    validate_cpu_count,
    validate_hosts,
    validate_image,
    validate_instance_type,
    validate_memory,
    validate_port,
    validate_role_arn,
)
from cdk_trn.enclave.vault_state import KEY_STATE_OBJECT, state_bucket, storage_key
from cdk_trn.interfaces import ITrainingNetwork
from cdk_trn_runtime.contract import (
    OUTPUT_VAULT_IMAGE_PCR0,
    OUTPUT_VAULT_KEY_ARN,
    OUTPUT_VAULT_URL_PARAMETER,
    VAULT_DISCOVERY_TAG,
    VAULT_URL_PENDING,
)

__all__ = [
    "ADMIN_ACTIONS",
    "CRYPTO_ACTIONS",
    "KEY_STATE_OBJECT",
    "STATE_ACCESS_LOG_PREFIX",
    "EnclaveKeyVault",
    "VaultClient",
    "VaultEndpoint",
]

#: Where the state bucket's server access logs go in their bucket, by default.
STATE_ACCESS_LOG_PREFIX = "vault-state/"
PURPOSE_TAG = ("cdk-trn:purpose", "enclave")
DISCOVERY_TAG_KEY = VAULT_DISCOVERY_TAG


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
        KMS's waiting period), the state bucket (only when empty) and the log groups (the hosts'
        boot logs, and the image build's from ``EnclaveImage.from_directory``/``bundled``) with
        the stack. Default: False (retained on stack delete).
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
        spec = validate_instance_type(instance_type)
        validate_access_log_prefix("access_log_prefix", access_log_prefix)
        if access_log_bucket is not None:
            validate_access_log_bucket("access_log_bucket", scope, access_log_bucket)
        validate_cpu_count(spec, enclave_cpu_count)
        validate_memory(spec, enclave_memory_mib)
        validate_port(port)
        validate_hosts(hosts)
        validate_clients(clients)
        validate_image(image)
        removal_policy = stateful_removal_policy(destroy_on_delete)
        for prop, arn in (
            ("deployment_role_arn", deployment_role_arn),
            ("break_glass_role_arn", break_glass_role_arn),
        ):
            validate_role_arn(prop, arn)
        #: The roles that may change the key policy: the deployment's and the break-glass one.
        self.key_policy_roles = [
            deployment_role_arn or bootstrap_execution_role(cdk.Stack.of(scope)),
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

        self.storage_key = storage_key(
            self, key_policy_roles=self.key_policy_roles, removal_policy=removal_policy
        )
        #: The state bucket, and where its server access logs go (given, or the vault's own).
        self.access_log_bucket: s3.IBucket
        self.state_bucket, self.access_log_bucket = state_bucket(
            self,
            key=self.storage_key,
            removal_policy=removal_policy,
            logs_to=access_log_bucket,
            log_prefix=access_log_prefix,
        )
        self.image: BoundEnclaveImage = image.bind(
            self,
            bucket=self.state_bucket,
            encryption_key=self.storage_key,
            vpc=vpc,
            subnet=subnet,
            removal_policy=removal_policy,
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
            policy=enclave_key_policy(
                self.image,
                host_role=self.host_role,
                key_admins=list(key_admins),
                key_policy_roles=self.key_policy_roles,
            ),
        )
        cdk.Tags.of(self.key).add(*PURPOSE_TAG)
        self.key_policy_alerts = alert_on_key_policy_changes(
            self, self.key, key_policy_roles=self.key_policy_roles, removal_policy=removal_policy
        )

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
        self.s3_prefix_list_id = restrict_host_egress(
            self, self.security_group, vpc=vpc, subnet=subnet, encryption_key=self.storage_key
        )

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
        grant_host_access(
            self,
            stack,
            public_key_parameter_arn=self._parameter_arn(),
            url_parameter_arns=[self._parameter_arn(name) for name in self.url_parameter_names],
        )

        user_data = ec2.UserData.custom(cdk.Lazy.string(HostUserData(self, stack, clients)))
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

    # --- resources ---------------------------------------------------------------------------

    @property
    def connections(self) -> ec2.Connections:
        return self._connections

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
