"""The checks of ``EnclaveKeyVault``'s props, made before any resource exists, and the host
resources they reserve for the parent.

Each check names the prop, the value and what is allowed (:func:`cdk_trn.errors.invalid`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aws_cdk as cdk

from cdk_trn.catalog import HostSpec, enclave_host_spec
from cdk_trn.enclave.image import EnclaveImage
from cdk_trn.errors import invalid

__all__ = [
    "MAX_HOSTS",
    "MIN_ENCLAVE_MEMORY_MIB",
    "PARENT_RESERVED_MIB",
    "PARENT_RESERVED_VCPUS",
    "bootstrap_execution_role",
    "validate_clients",
    "validate_cpu_count",
    "validate_hosts",
    "validate_image",
    "validate_instance_type",
    "validate_memory",
    "validate_port",
    "validate_role_arn",
]

#: The CDK bootstrap's default qualifier (``cdk bootstrap`` without ``--qualifier``).
DEFAULT_BOOTSTRAP_QUALIFIER = "hnb659fds"
PARENT_RESERVED_VCPUS = 2
PARENT_RESERVED_MIB = 2048
MIN_ENCLAVE_MEMORY_MIB = 512
MAX_HOSTS = 8
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


def validate_role_arn(prop: str, arn: str | None) -> None:
    if arn is None or cdk.Token.is_unresolved(arn):
        return
    if not _ROLE_ARN.match(arn):
        raise invalid(prop, arn, "an IAM role ARN (arn:aws:iam::<account>:role/<name>)")


def bootstrap_execution_role(stack: cdk.Stack) -> str:
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


def validate_instance_type(instance_type: str) -> HostSpec:
    # The catalog's enclave hosts have at least 4 vCPUs: 2 for the enclave, 2 for the parent.
    return enclave_host_spec(instance_type)


def validate_cpu_count(spec: HostSpec, cpu_count: int) -> None:
    high = spec.vcpus - PARENT_RESERVED_VCPUS
    if not isinstance(cpu_count, int) or cpu_count < 2 or cpu_count > high or cpu_count % 2:
        raise invalid(
            "enclave_cpu_count",
            cpu_count,
            f"an even number from 2 to {high} on {spec.instance_type} (whole cores; "
            f"{PARENT_RESERVED_VCPUS} vCPUs stay with the parent)",
        )


def validate_memory(spec: HostSpec, memory_mib: int) -> None:
    high = spec.memory_gib * 1024 - PARENT_RESERVED_MIB
    if not isinstance(memory_mib, int) or not MIN_ENCLAVE_MEMORY_MIB <= memory_mib <= high:
        raise invalid(
            "enclave_memory_mib",
            memory_mib,
            f"{MIN_ENCLAVE_MEMORY_MIB} to {high} MiB on {spec.instance_type} "
            f"({PARENT_RESERVED_MIB} MiB stay with the parent)",
        )


def validate_port(port: int) -> None:
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise invalid("port", port, "a TCP port from 1024 to 65535 (the server is not root)")


def validate_hosts(hosts: int) -> None:
    if not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
        raise invalid("hosts", hosts, f"1 to {MAX_HOSTS}")


def validate_clients(clients: Sequence[Any]) -> None:
    if not clients:
        raise invalid("clients", list(clients), "at least one client (e.g. the cluster)")
    for client in clients:
        if not hasattr(client, "connections") or not hasattr(client, "role"):
            raise invalid(
                "clients", client, "objects with .connections and .role (e.g. TrainiumCluster)"
            )


def validate_image(image: Any) -> None:
    if not isinstance(image, EnclaveImage):
        raise invalid(
            "image", image, "an EnclaveImage (from_measurements(...) or from_directory(...))"
        )
