"""Output and input field types: ``string``, ``integer``, ``number``, ``boolean``,
``object`` and ``list[T]`` (nestable), with JSON Schema and pydantic validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import GenericAlias
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from .errors import did_you_mean

SCALAR_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "object")
MAX_LIST_DEPTH = 8

_PYTHON: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "object": dict[str, Any],
}


class FieldTypeError(ValueError):
    """A type expression such as ``list[strng]`` is not valid."""


@dataclass(frozen=True)
class FieldType:
    """A parsed type: a scalar ``name``, or ``name == "list"`` with an ``item`` type."""

    name: str
    item: FieldType | None = None

    def __str__(self) -> str:
        return f"list[{self.item}]" if self.item is not None else self.name

    def json_schema(self) -> dict[str, Any]:
        if self.item is not None:
            return {"type": "array", "items": self.item.json_schema()}
        return {"type": self.name}

    def python_type(self) -> Any:
        if self.item is not None:
            return GenericAlias(list, (self.item.python_type(),))  # list[item], built at run time
        return _PYTHON[self.name]


@lru_cache(maxsize=1024)
def parse_field_type(src: str) -> FieldType:
    """Parse ``"list[list[string]]"`` (spaces ignored); raise :class:`FieldTypeError`."""
    if not isinstance(src, str):
        raise FieldTypeError("a type must be a string such as 'string' or 'list[integer]'")
    text = "".join(src.split())
    depth = 0
    while text.startswith("list[") and text.endswith("]"):
        text = text[5:-1]
        depth += 1
    if depth > MAX_LIST_DEPTH:
        raise FieldTypeError(f"type {src!r} nests lists too deeply (max {MAX_LIST_DEPTH})")
    if text not in SCALAR_TYPES:
        if text == "list":
            raise FieldTypeError("'list' needs an item type, e.g. 'list[string]'")
        allowed = ", ".join(SCALAR_TYPES) + ", list[T]"
        raise FieldTypeError(
            f"unknown type {src.strip()!r}{did_you_mean(text, SCALAR_TYPES)}; allowed: {allowed}"
        )
    result = FieldType(text)
    for _ in range(depth):
        result = FieldType("list", result)
    return result


def output_json_schema(fields: Mapping[str, str]) -> dict[str, Any]:
    """JSON Schema of an output object: every field required, no additional properties."""
    return {
        "type": "object",
        "properties": {name: parse_field_type(t).json_schema() for name, t in fields.items()},
        "required": list(fields),
        "additionalProperties": False,
    }


def build_output_model(
    node_id: str,
    fields: Mapping[str, str],
    *,
    extra: Literal["forbid", "ignore"] = "forbid",
) -> type[BaseModel]:
    """A pydantic model that validates and coerces a node's output dict.

    Field names are aliases, so any identifier (``json``, ``model_id``, ``_x``) is safe;
    use ``model_validate(data).model_dump(by_alias=True)`` to get the state update.
    """
    definitions: dict[str, Any] = {
        f"f{i}": (parse_field_type(t).python_type(), Field(alias=name))
        for i, (name, t) in enumerate(fields.items())
    }
    config = ConfigDict(extra=extra, frozen=True, protected_namespaces=())
    model: type[BaseModel] = create_model(
        f"{_camel(node_id)}Output", __config__=config, **definitions
    )
    return model


def validate_value(type_src: str, value: Any) -> Any:
    """Validate and coerce one value against a type; raise ``ValueError`` with a short message."""
    adapter: TypeAdapter[Any] = _adapter(type_src)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" for p in first["loc"])
        msg = first["msg"].replace("Input should be", "should be")
        at = f" (at {where})" if where else ""
        raise ValueError(f"expected {type_src}{at}: {msg}") from None


@lru_cache(maxsize=256)
def _adapter(type_src: str) -> TypeAdapter[Any]:
    return TypeAdapter(parse_field_type(type_src).python_type())


def _camel(node_id: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in node_id.split("_")) or "Node"
