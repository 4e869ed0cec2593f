"""Data repository associations: links between FSx for Lustre directories and S3 locations.

Facts: FSx for Lustre API reference, ``CreateDataRepositoryAssociation``; property names from the
CloudFormation schema of ``AWS::FSx::DataRepositoryAssociation``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import aws_cdk as cdk
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn.errors import invalid

if TYPE_CHECKING:
    from cdk_trn.storage.buckets import TrainingBuckets

__all__ = [
    "ALL_EVENTS",
    "MAX_DATA_REPOSITORY_ASSOCIATIONS",
    "DataRepositoryAssociation",
    "DataRepositoryEvent",
    "cfn_data_repository_association",
    "default_data_repository_associations",
    "validate_associations",
]

MAX_DATA_REPOSITORY_ASSOCIATIONS = 8


class DataRepositoryEvent(StrEnum):
    """Events of ``S3.AutoImportPolicy.Events`` / ``S3.AutoExportPolicy.Events``."""

    NEW = "NEW"
    CHANGED = "CHANGED"
    DELETED = "DELETED"


ALL_EVENTS: tuple[DataRepositoryEvent, ...] = tuple(DataRepositoryEvent)


def _events(
    prop: str, events: Iterable[DataRepositoryEvent | str]
) -> tuple[DataRepositoryEvent, ...]:
    if isinstance(events, str):
        raise invalid(prop, events, "a sequence of NEW, CHANGED, DELETED (not a single string)")
    chosen: list[DataRepositoryEvent] = []
    for event in events:
        try:
            value = DataRepositoryEvent(event)
        except ValueError:
            raise invalid(prop, event, "each one of NEW, CHANGED, DELETED") from None
        if value in chosen:
            raise invalid(prop, event, "each event at most once")
        chosen.append(value)
    return tuple(chosen)


@dataclass(frozen=True)
class DataRepositoryAssociation:
    """A link between a file-system directory and an S3 location.

    :param file_system_path: directory in the file system, starting with ``/`` (``/`` alone links
        the whole file system and then allows no other association).
    :param data_repository_path: ``s3://bucket`` or ``s3://bucket/prefix/``. Use
        :meth:`for_bucket` to build it from a bucket.
    :param import_events: S3 changes imported automatically. Default: none.
    :param export_events: file-system changes exported automatically. Default: none.
    :param batch_import_meta_data_on_create: import the metadata of existing objects when the
        association is created. Default: False.
    :param imported_file_chunk_size_mib: stripe size for imported files, 1-512000 MiB.
        Default: None (FSx default, 1024 MiB).
    """

    file_system_path: str
    data_repository_path: str
    import_events: tuple[DataRepositoryEvent, ...] = ()
    export_events: tuple[DataRepositoryEvent, ...] = ()
    batch_import_meta_data_on_create: bool = False
    imported_file_chunk_size_mib: int | None = None
    _bucket: s3.IBucket | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        path = self.file_system_path
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid(
                "data_repository_associations.file_system_path",
                path,
                "a directory starting with '/'",
            )
        if "//" in path or (path != "/" and path.endswith("/")) or len(path) > 4096:
            raise invalid(
                "data_repository_associations.file_system_path",
                path,
                "an absolute directory such as /datasets (no '//', no trailing '/', <= 4096 chars)",
            )
        repo = self.data_repository_path
        if not isinstance(repo, str) or not repo.startswith("s3://") or len(repo) <= len("s3://"):
            raise invalid(
                "data_repository_associations.data_repository_path",
                repo,
                "an S3 location starting with 's3://' (s3://bucket or s3://bucket/prefix/)",
            )
        object.__setattr__(
            self,
            "import_events",
            _events("data_repository_associations.import_events", self.import_events),
        )
        object.__setattr__(
            self,
            "export_events",
            _events("data_repository_associations.export_events", self.export_events),
        )
        chunk = self.imported_file_chunk_size_mib
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 512000
        ):
            raise invalid(
                "data_repository_associations.imported_file_chunk_size_mib",
                chunk,
                "1 to 512000 MiB",
            )

    @classmethod
    def for_bucket(
        cls,
        file_system_path: str,
        bucket: s3.IBucket,
        *,
        prefix: str = "",
        import_events: Sequence[DataRepositoryEvent | str] = (),
        export_events: Sequence[DataRepositoryEvent | str] = (),
        batch_import_meta_data_on_create: bool = False,
        imported_file_chunk_size_mib: int | None = None,
    ) -> DataRepositoryAssociation:
        """An association to ``bucket`` (optionally under ``prefix``, which must end with ``/``)."""
        if prefix and (prefix.startswith("/") or not prefix.endswith("/")):
            raise invalid("prefix", prefix, "empty or a key prefix like 'runs/' (no leading '/')")
        return cls(
            file_system_path=file_system_path,
            data_repository_path=f"s3://{bucket.bucket_name}/{prefix}",
            import_events=tuple(import_events),  # type: ignore[arg-type]
            export_events=tuple(export_events),  # type: ignore[arg-type]
            batch_import_meta_data_on_create=batch_import_meta_data_on_create,
            imported_file_chunk_size_mib=imported_file_chunk_size_mib,
            _bucket=bucket,
        )

    @property
    def bucket(self) -> s3.IBucket | None:
        """The bucket this association was built from with :meth:`for_bucket`, if any."""
        return self._bucket


def default_data_repository_associations(
    buckets: TrainingBuckets,
) -> tuple[DataRepositoryAssociation, ...]:
    """The storage stack's associations: ``/datasets`` and ``/checkpoints``.

    * ``/datasets`` <- dataset bucket: existing objects' metadata imported at creation, then new,
      changed and deleted objects imported automatically. Nothing is exported.
    * ``/checkpoints`` -> checkpoint bucket: new, changed and deleted files exported automatically
      (the bucket is versioned, so a deleted checkpoint stays recoverable for the non-current
      retention). Existing checkpoints' metadata is imported at creation, so a recreated file
      system sees earlier runs' checkpoints.
    """
    return (
        DataRepositoryAssociation.for_bucket(
            "/datasets",
            buckets.dataset_bucket,
            import_events=ALL_EVENTS,
            batch_import_meta_data_on_create=True,
        ),
        DataRepositoryAssociation.for_bucket(
            "/checkpoints",
            buckets.checkpoint_bucket,
            export_events=ALL_EVENTS,
            batch_import_meta_data_on_create=True,
        ),
    )


def validate_associations(
    associations: Sequence[DataRepositoryAssociation],
) -> tuple[DataRepositoryAssociation, ...]:
    """The ``data_repository_associations`` prop, checked: at most 8, one per directory, and
    ``/`` alone."""
    chosen = tuple(associations)
    if len(chosen) > MAX_DATA_REPOSITORY_ASSOCIATIONS:
        raise invalid(
            "data_repository_associations",
            f"{len(chosen)} associations",
            f"at most {MAX_DATA_REPOSITORY_ASSOCIATIONS} per file system",
        )
    seen: set[str] = set()
    for association in chosen:
        if not isinstance(association, DataRepositoryAssociation):
            raise invalid(
                "data_repository_associations", association, "DataRepositoryAssociation values"
            )
        path = association.file_system_path
        if path in seen:
            raise invalid(
                "data_repository_associations.file_system_path",
                path,
                "unique: a directory links to one S3 location",
            )
        seen.add(path)
    if "/" in seen and len(seen) > 1:
        raise invalid(
            "data_repository_associations.file_system_path",
            "/",
            "the only association when the whole file system ('/') is linked",
        )
    return chosen


def cfn_data_repository_association(
    scope: Construct,
    id: str,
    association: DataRepositoryAssociation,
    *,
    file_system_id: str,
    removal_policy: cdk.RemovalPolicy,
) -> fsx.CfnDataRepositoryAssociation:
    """The ``AWS::FSx::DataRepositoryAssociation`` of ``association`` on ``file_system_id``."""
    s3_config: dict[str, Any] = {}
    if association.import_events:
        s3_config["auto_import_policy"] = fsx.CfnDataRepositoryAssociation.AutoImportPolicyProperty(
            events=[e.value for e in association.import_events]
        )
    if association.export_events:
        s3_config["auto_export_policy"] = fsx.CfnDataRepositoryAssociation.AutoExportPolicyProperty(
            events=[e.value for e in association.export_events]
        )
    # L1: the L2 has no data repository association construct.
    resource = fsx.CfnDataRepositoryAssociation(
        scope,
        id,
        file_system_id=file_system_id,
        file_system_path=association.file_system_path,
        data_repository_path=association.data_repository_path,
        batch_import_meta_data_on_create=association.batch_import_meta_data_on_create,
        imported_file_chunk_size=association.imported_file_chunk_size_mib,
        s3=fsx.CfnDataRepositoryAssociation.S3Property(**s3_config) if s3_config else None,
    )
    resource.apply_removal_policy(removal_policy)
    return resource
