"""The stacks of a cloud assembly directory: template files and regions, from ``manifest.json``.

Reads the manifest as JSON (no jsii): ``aws:cloudformation:stack`` artifacts carry
``properties.templateFile`` and ``environment`` (``aws://<account>/<region>``, with
``unknown-region`` for region-agnostic stacks); ``cdk:cloud-assembly`` artifacts are nested
assemblies (Stages) in ``properties.directoryName``. Nested-stack templates are file assets of
their parent, listed in the parent's asset manifest, and are linted with the parent's region.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNKNOWN_REGION = "unknown-region"


@dataclass(frozen=True)
class StackTemplate:
    """One template of the assembly and the region CloudFormation will deploy it to."""

    #: Display name of the stack (``Stage/Stack`` for stacks in stages); nested templates add
    #: `` (nested <file>)``.
    name: str
    template_path: Path
    #: ``None`` for a region-agnostic stack.
    region: str | None


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a cloud assembly: no manifest.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _region(environment: str | None) -> str | None:
    if not environment or not environment.startswith("aws://"):
        return None
    region = environment.rsplit("/", 1)[-1]
    return None if region == UNKNOWN_REGION else region


def _nested_templates(
    directory: Path, artifacts: dict[str, Any], stack: dict[str, Any]
) -> list[str]:
    own = stack.get("properties", {}).get("templateFile")
    found = []
    for dependency in stack.get("dependencies", []):
        artifact = artifacts.get(dependency, {})
        if artifact.get("type") != "cdk:asset-manifest":
            continue
        assets = json.loads(
            (directory / artifact["properties"]["file"]).read_text(encoding="utf-8")
        )
        for asset in assets.get("files", {}).values():
            path = asset.get("source", {}).get("path", "")
            # The stack's own template is an asset too (it is uploaded for deployment).
            if path.endswith(".template.json") and path != own:
                found.append(path)
    return found


def stack_templates(assembly_dir: str | Path) -> list[StackTemplate]:
    """Every stack template of the assembly (nested assemblies and nested stacks included)."""
    directory = Path(assembly_dir)
    artifacts: dict[str, Any] = _manifest(directory).get("artifacts", {})
    templates: list[StackTemplate] = []
    for artifact_id, artifact in artifacts.items():
        kind = artifact.get("type")
        props = artifact.get("properties", {})
        if kind == "aws:cloudformation:stack":
            name = artifact.get("displayName", artifact_id)
            region = _region(artifact.get("environment"))
            templates.append(StackTemplate(name, directory / props["templateFile"], region))
            for nested in _nested_templates(directory, artifacts, artifact):
                templates.append(
                    StackTemplate(f"{name} (nested {nested})", directory / nested, region)
                )
        elif kind == "cdk:cloud-assembly":
            templates += stack_templates(directory / props["directoryName"])
    return templates


def logical_ids(assembly_dir: str | Path) -> dict[tuple[str, str], str]:
    """``(template file, logical id) -> construct path`` for every resource of the assembly.

    From the ``aws:cdk:logicalId`` metadata of each stack artifact (in ``manifest.json`` or, in
    newer assemblies, the artifact's ``additionalMetadataFile``).
    """
    directory = Path(assembly_dir)
    found: dict[tuple[str, str], str] = {}
    artifacts: dict[str, Any] = _manifest(directory).get("artifacts", {})
    for artifact in artifacts.values():
        props = artifact.get("properties", {})
        if artifact.get("type") == "cdk:cloud-assembly":
            nested = props["directoryName"]
            for (template, logical_id), path in logical_ids(directory / nested).items():
                found[(f"{nested}/{template}", logical_id)] = path
            continue
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        metadata = dict(artifact.get("metadata") or {})
        extra = artifact.get("additionalMetadataFile")
        if extra and (directory / extra).is_file():
            metadata.update(json.loads((directory / extra).read_text(encoding="utf-8")))
        for path, entries in metadata.items():
            for entry in entries or []:
                if entry.get("type") == "aws:cdk:logicalId":
                    found[(props["templateFile"], str(entry.get("data")))] = path.lstrip("/")
    return found
