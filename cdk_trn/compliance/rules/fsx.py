"""FSx for Lustre rules: PERSISTENT_2 with a customer-managed key (TRN7) and the metadata
configuration an EFA-enabled file system requires (TRN8).

Sources: FSx for Lustre user guide (encryption-at-rest.html: KmsKeyId applies to PERSISTENT
file systems, SCRATCH always uses an FSx-owned key; efa-file-systems.html: EFA needs
PERSISTENT_2 and a MetadataConfiguration); FACTS.md "FSx for Lustre".
"""

from __future__ import annotations

from cdk_trn.compliance.rules import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_APPLICABLE,
    Compliance,
    Rule,
    TemplateResource,
    is_true,
)

FILE_SYSTEM = "AWS::FSx::FileSystem"


def _lustre(resource: TemplateResource) -> dict[str, object] | None:
    if resource.properties.get("FileSystemType") != "LUSTRE":
        return None
    return dict(resource.properties.get("LustreConfiguration") or {})


def lustre_persistent2_with_customer_key(file_system: TemplateResource) -> Compliance:
    """TRN7: PERSISTENT_2, and KmsKeyId points at an AWS::KMS::Key of the same template."""
    lustre = _lustre(file_system)
    if lustre is None:
        return NOT_APPLICABLE
    if lustre.get("DeploymentType") != "PERSISTENT_2":
        return NON_COMPLIANT
    key = file_system.resolve(file_system.properties.get("KmsKeyId"))
    return COMPLIANT if key is not None and key.type == "AWS::KMS::Key" else NON_COMPLIANT


def efa_lustre_has_metadata_configuration(file_system: TemplateResource) -> Compliance:
    """TRN8: an EFA-enabled Lustre file system declares its MetadataConfiguration."""
    lustre = _lustre(file_system)
    if lustre is None or not is_true(lustre.get("EfaEnabled")):
        return NOT_APPLICABLE
    return COMPLIANT if lustre.get("MetadataConfiguration") else NON_COMPLIANT


TRN7 = Rule(
    id="TRN7",
    info="The FSx for Lustre file system is not PERSISTENT_2 with a customer-managed KMS key.",
    explanation=(
        "Training data and checkpoints live on the file system. SCRATCH types lose data when a "
        "server fails and always use an FSx-owned key; PERSISTENT_1 is the previous generation. "
        "A customer-managed key (an AWS::KMS::Key in the same stack, not alias/aws/fsx) keeps "
        "who can read the data in the key policy, auditable in CloudTrail."
    ),
    resource_types=(FILE_SYSTEM,),
    check=lustre_persistent2_with_customer_key,
)

TRN8 = Rule(
    id="TRN8",
    info="The EFA-enabled FSx for Lustre file system has no MetadataConfiguration.",
    explanation=(
        "FSx accepts EfaEnabled only on PERSISTENT_2 with a metadata configuration, set at "
        "creation; without it the stack fails at deploy time, after the other storage exists."
    ),
    resource_types=(FILE_SYSTEM,),
    check=efa_lustre_has_metadata_configuration,
)
