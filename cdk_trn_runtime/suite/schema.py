"""The JSON the suite writes, as JSON Schema documents, and a validator in the standard library.

Two documents: ``rank-<N>.json`` (one per rank, ``RANK_RESULT_SCHEMA``) and ``summary.json``
(written by rank 0, ``SUMMARY_SCHEMA``). ``summary.json`` is the contract with cdk-trn's
acceptance custom resource, which reads ``passed``, ``failures`` and ``figures``; a change that
breaks a reader of version 1 must raise ``SCHEMA_VERSION``.

The validator implements the subset of JSON Schema (draft 2020-12) these documents use: ``type``,
``const``, ``enum``, ``minimum``, ``minLength``, ``required``, ``properties``,
``additionalProperties`` and ``items``. It needs no third-party package so the handler and the
tests can use it without installing jsonschema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cdk_trn_runtime.contract.acceptance import SUMMARY_SCHEMA_VERSION

#: The contract's (the acceptance handler checks the same number).
SCHEMA_VERSION = SUMMARY_SCHEMA_VERSION

_NUMBER: dict[str, Any] = {"type": "number"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}

FAILURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["check", "rank", "node", "measured", "threshold", "unit", "message"],
    "properties": {
        "check": {"type": "string", "minLength": 1},
        "rank": {"type": "integer", "minimum": 0},
        "node": {"type": "string"},
        "measured": _NUMBER,
        "threshold": _NUMBER,
        "unit": {"type": "string"},
        "message": {"type": "string", "minLength": 1},
    },
}

SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "trn-acceptance summary",
    "type": "object",
    "required": ["schema_version", "run_id", "world_size", "passed", "failures", "figures"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "run_id": {"type": "string", "minLength": 1},
        "world_size": {"type": "integer", "minimum": 1},
        "passed": {"type": "boolean"},
        "failures": {"type": "array", "items": FAILURE_SCHEMA},
        "figures": {"type": "object", "additionalProperties": _NUMBER},
        "platform": {"type": "string", "enum": ["NEURON", "CUDA", "CPU"]},
        "nodes": {"type": "array", "items": {"type": "string"}},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "notes": {"type": "array", "items": {"type": "string"}},
        "thresholds": {"type": "object"},
        "created_at": {"type": "string"},
    },
}

RANK_RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "trn-acceptance rank result",
    "type": "object",
    "required": [
        "schema_version",
        "run_id",
        "rank",
        "world_size",
        "node",
        "platform",
        "discovery",
        "gemm",
        "hbm_copy",
        "collectives",
        "training",
        "compile",
        "compile_cache",
        "errors",
        "failures",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "run_id": {"type": "string", "minLength": 1},
        "rank": {"type": "integer", "minimum": 0},
        "world_size": {"type": "integer", "minimum": 1},
        "local_rank": {"type": "integer", "minimum": 0},
        "node": {"type": "string"},
        "platform": {"type": "string", "enum": ["NEURON", "CUDA", "CPU"]},
        "discovery": {"type": "object"},
        "gemm": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["m", "n", "k", "seconds", "tflops", "numerics"],
                "properties": {
                    "m": {"type": "integer", "minimum": 1},
                    "n": {"type": "integer", "minimum": 1},
                    "k": {"type": "integer", "minimum": 1},
                    "seconds": _NUMBER,
                    "tflops": _NUMBER,
                    "fraction_of_peak": {"type": ["number", "null"]},
                    "numerics": {"type": "object"},
                },
            },
        },
        "hbm_copy": {"type": ["object", "null"]},
        "collectives": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "op",
                    "size_bytes",
                    "seconds",
                    "algbw_gbps",
                    "busbw_gbps",
                    "correct",
                ],
                "properties": {
                    "op": {"type": "string", "enum": ["all_reduce", "all_gather"]},
                    "size_bytes": {"type": "integer", "minimum": 1},
                    "seconds": _NUMBER,
                    "algbw_gbps": _NUMBER,
                    "busbw_gbps": _NUMBER,
                    "correct": {"type": "boolean"},
                },
            },
        },
        "training": {"type": ["object", "null"]},
        "compile": {
            "type": "object",
            "required": ["compile_seconds", "compilations"],
            "properties": {"compile_seconds": _NUMBER, "compilations": _COUNT},
        },
        "compile_cache": {"type": ["object", "null"]},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        "failures": {"type": "array", "items": FAILURE_SCHEMA},
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "integer": (int,),
    "number": (int, float),
}


def _is_type(value: Any, name: str) -> bool:
    # bool is an int in Python but not a number in JSON.
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "number" and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _TYPES[name])


def _validate(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
        return
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, name) for name in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        errors.append(f"{path}: {value!r} is below the minimum {schema['minimum']!r}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _validate(item, properties[key], f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, Mapping):
                _validate(item, extra, f"{path}.{key}", errors)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _validate(item, schema["items"], f"{path}[{index}]", errors)


def validation_errors(document: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way ``document`` violates ``schema``, as readable strings; empty when it is valid."""
    errors: list[str] = []
    _validate(document, schema, "$", errors)
    return errors


class SchemaError(ValueError):
    """A document does not match its schema."""


def validate_summary(document: Any) -> None:
    """Raise ``SchemaError`` listing every problem when ``document`` is not a valid summary."""
    errors = validation_errors(document, SUMMARY_SCHEMA)
    if errors:
        raise SchemaError("invalid summary.json: " + "; ".join(errors))


def validate_rank_result(document: Any) -> None:
    """Raise ``SchemaError`` listing every problem when ``document`` is not a valid rank result."""
    errors = validation_errors(document, RANK_RESULT_SCHEMA)
    if errors:
        raise SchemaError("invalid rank result: " + "; ".join(errors))
