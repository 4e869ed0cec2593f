"""The metadata configuration of a PERSISTENT_2 FSx for Lustre file system.

Facts: FSx for Lustre API reference, ``CreateFileSystemLustreMetadataConfiguration``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aws_cdk import aws_fsx as fsx

from cdk_trn.errors import invalid

__all__ = ["MetadataConfiguration", "MetadataMode"]


class MetadataMode(StrEnum):
    """``LustreConfiguration.MetadataConfiguration.Mode`` (PERSISTENT_2 only)."""

    AUTOMATIC = "AUTOMATIC"
    USER_PROVISIONED = "USER_PROVISIONED"


@dataclass(frozen=True)
class MetadataConfiguration:
    """Metadata performance of a PERSISTENT_2 file system.

    ``AUTOMATIC`` scales metadata IOPS with capacity; ``USER_PROVISIONED`` takes ``iops``: 1500,
    3000, 6000, 12000 or a multiple of 12000 up to 192000 (SSD; API reference,
    ``CreateFileSystemLustreMetadataConfiguration``).
    """

    mode: MetadataMode = MetadataMode.AUTOMATIC
    iops: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", MetadataMode(self.mode))
        except ValueError:
            raise invalid(
                "metadata_configuration.mode", self.mode, "AUTOMATIC or USER_PROVISIONED"
            ) from None
        if self.mode is MetadataMode.AUTOMATIC:
            if self.iops is not None:
                raise invalid(
                    "metadata_configuration.iops",
                    self.iops,
                    "unset in AUTOMATIC mode (FSx sets it)",
                )
            return
        iops = self.iops
        if (
            isinstance(iops, bool)
            or not isinstance(iops, int)
            or not (iops in (1500, 3000, 6000) or (12000 <= iops <= 192000 and iops % 12000 == 0))
        ):
            raise invalid(
                "metadata_configuration.iops",
                iops,
                "1500, 3000, 6000, 12000 or a multiple of 12000 up to 192000 "
                "in USER_PROVISIONED mode",
            )

    @classmethod
    def automatic(cls) -> MetadataConfiguration:
        return cls(MetadataMode.AUTOMATIC)

    @classmethod
    def user_provisioned(cls, iops: int) -> MetadataConfiguration:
        return cls(MetadataMode.USER_PROVISIONED, iops)

    def to_cfn(self) -> fsx.CfnFileSystem.MetadataConfigurationProperty:
        return fsx.CfnFileSystem.MetadataConfigurationProperty(mode=self.mode.value, iops=self.iops)
