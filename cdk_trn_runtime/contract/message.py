"""The base of every message that crosses from the constructs to the runtime.

A message is a frozen dataclass whose fields carry their wire name in ``metadata["key"]`` (a
custom resource property, an environment variable, a JSON key). The construct builds the
message and calls :meth:`Message.to_properties`; the runtime calls :meth:`Message.from_properties`
on what it received. So each key is spelled once, here in the contract, and a construct's prop
leads by "go to definition" to the handler that reads it.

CloudFormation hands custom resources every scalar as a string; parsing converts back to the
field's type and names the field and the value when it cannot. Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, get_args, get_origin

M = TypeVar("M", bound="Message")


class MessageError(ValueError):
    """A message that cannot be parsed: names the message, the field (its wire key) and why."""


def key(
    name: str, *, default: Any = dataclasses.MISSING, doc: str = "", keep_none: bool = False
) -> Any:
    """A message field sent as ``name``; without ``default`` the field is required.

    ``keep_none``: a ``None`` value is sent (as JSON ``null``) instead of being left out, for
    documents whose form predates the message (the Slurm cluster document's ``munge_socket``).
    """
    metadata = {"key": name, "doc": doc, "keep_none": keep_none}
    if isinstance(default, (list, dict, set)):
        raise TypeError("message defaults are immutable: use a tuple")
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Message:
    """Base class: frozen dataclasses whose every field is made by :func:`key`."""

    #: What the message is, for errors ("acceptance run properties").
    DESCRIPTION: ClassVar[str] = "message"

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Field name -> wire key, in declaration order."""
        return {f.name: f.metadata["key"] for f in dataclasses.fields(cls)}

    @classmethod
    def key_of(cls, field_name: str) -> str:
        """The wire key of ``field_name`` (e.g. the attribute a construct reads from a custom
        resource the runtime answers with this message)."""
        keys = cls.keys()
        if field_name not in keys:
            raise KeyError(f"{cls.DESCRIPTION} has no field {field_name!r}: {sorted(keys)}")
        return keys[field_name]

    def to_properties(
        self, *, omit_defaults: bool = False, strings: bool = False
    ) -> dict[str, Any]:
        """The message on the wire: wire key -> value (tuples as lists; ``None`` left out).

        Values may be CDK tokens on the construct side; they are passed through unchanged.
        ``omit_defaults`` leaves out fields equal to their default (keeps templates small).
        ``strings`` sends integers and booleans the way CloudFormation hands them to a custom
        resource (``"4"``, ``"true"``), so the template holds what the handler receives.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not f.metadata.get("keep_none"):
                continue
            if omit_defaults and f.default is not dataclasses.MISSING and value == f.default:
                continue
            out[f.metadata["key"]] = _to_wire(value, strings)
        return out

    def to_environment(self) -> dict[str, str]:
        """The message as environment variables, in declaration order: wire key -> string.
        Integers in decimal, booleans ``1``/``0`` (the shell's convention), a nested message as
        its JSON (sorted keys); ``None`` left out. CDK tokens (strings) pass unchanged."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.metadata["key"]] = _to_environment(value)
        return out

    @classmethod
    def from_environment(cls: type[M], environ: Mapping[str, str]) -> M:
        """Parse what :meth:`to_environment` wrote (variables of other messages are ignored);
        raises :class:`MessageError` naming the variable."""
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            wire = f.metadata["key"]
            if wire not in environ:
                continue
            value = environ[wire]
            hint = _unoptional(hints[f.name])
            try:
                if hint is bool and value in ("1", "0"):
                    properties[wire] = value == "1"
                elif isinstance(hint, type) and issubclass(hint, Message):
                    properties[wire] = json.loads(value)
                else:
                    properties[wire] = value
            except ValueError as error:
                raise MessageError(
                    f"{cls.DESCRIPTION}: {wire} {value!r} is not valid: {error}"
                ) from None
        return cls.from_properties(properties)

    @classmethod
    def from_properties(cls: type[M], properties: Mapping[str, Any]) -> M:
        """Parse and validate; raises :class:`MessageError` naming the field."""
        if not isinstance(properties, Mapping):
            raise MessageError(f"{cls.DESCRIPTION}: expected a mapping, got {type(properties)}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            wire = f.metadata["key"]
            if wire not in properties or properties[wire] is None:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise MessageError(f"{cls.DESCRIPTION}: {wire} is missing")
                continue
            try:
                values[f.name] = _from_wire(hints[f.name], properties[wire])
            except (TypeError, ValueError) as error:
                raise MessageError(
                    f"{cls.DESCRIPTION}: {wire} {properties[wire]!r} is not valid: {error}"
                ) from None
        message = cls(**values)
        message.validate()
        return message

    def validate(self) -> None:
        """Checks beyond the types; raise :class:`MessageError` naming the wire key."""

    def invalid(self, field_name: str, allowed: str) -> MessageError:
        """An error for ``field_name``'s value, naming its wire key and what is allowed."""
        wire = type(self).keys()[field_name]
        return MessageError(
            f"{self.DESCRIPTION}: {wire} {getattr(self, field_name)!r} is not valid: {allowed}"
        )


def _to_wire(value: Any, strings: bool = False) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Message):
        return value.to_properties(strings=strings)
    if isinstance(value, tuple):
        return [_to_wire(v, strings) for v in value]
    if strings and isinstance(value, bool):
        return "true" if value else "false"
    if strings and isinstance(value, int):
        return str(value)
    if strings and isinstance(value, float):
        return str(int(value)) if value.is_integer() else format(value, ".6g")
    return value


def _to_environment(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, Message):
        return json.dumps(value.to_properties(), sort_keys=True)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list, dict)):
        raise TypeError(f"no environment form for {value!r}: use a string or a nested message")
    return str(value)


def _unoptional(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"unsupported union {hint}")
        return options[0]
    return hint


def _from_wire(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _from_wire(_unoptional(hint), value)
    if origin is tuple:
        item = get_args(hint)[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError("expected a list")
        return tuple(_from_wire(item, v) for v in value)
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint.from_properties(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [member.value for member in hint]
        for member in hint:
            if member.value == value:
                return member
        raise ValueError(f"one of {', '.join(map(str, allowed))}")
    if hint is bool:
        return _boolean(value)
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("expected a string")
        return str(value)
    if hint is Any:
        return value
    if get_origin(hint) is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError("expected a mapping")
        return dict(value)
    raise TypeError(f"unsupported field type {hint}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("expected true or false")
