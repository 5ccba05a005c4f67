"""Avro schemas for the output events, generated from the same pydantic models as the JSON ones.

:func:`avro_schema` walks a model's JSON Schema (pydantic's, serialization mode) and maps it:

    JSON Schema                          Avro
    object with properties               record (a ``$defs`` entry: a named record, defined once)
    object with additionalProperties     map
    array                                array
    string / integer / number / boolean  string / long / double / boolean
    string, format date-time             long, logicalType timestamp-micros (UTC)
    enum of strings                      enum (named for its ``$defs`` entry, else record+field)
    anyOf [..., null]                    union, null first when the default is null

Constraints Avro cannot say (bounds, lengths, patterns) are left out: the pydantic models still
enforce them before anything is written. A field with a default keeps it, and an optional map
or list defaults to empty, so a field added later with a default stays BACKWARD compatible.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["NAMESPACE", "avro_schema"]

#: The namespace of every named type (records and enums) we generate.
NAMESPACE = "dev.modstream.v1"

_SCALARS = {"string": "string", "integer": "long", "number": "double", "boolean": "boolean"}


def avro_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro schema of ``model``'s serialized form (its ``model_dump(mode="python")``)."""
    source = model.model_json_schema(mode="serialization")
    return _Converter(source.get("$defs", {})).record(model.__name__, source)


class _Converter:
    """One model's conversion: remembers the named types already defined (Avro defines once)."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.defined: set[str] = set()

    def record(self, name: str, node: dict[str, Any]) -> dict[str, Any]:
        self.defined.add(name)
        required = set(node.get("required", ()))
        fields = []
        for field_name, prop in node.get("properties", {}).items():
            avro_type = self.type(prop, f"{name}{_camel(field_name)}")
            field: dict[str, Any] = {"name": field_name, "type": avro_type}
            if "description" in prop:
                field["doc"] = prop["description"]
            if "default" in prop:
                field["default"] = _default(prop["default"], avro_type)
            elif field_name not in required and _container(avro_type) is not None:
                field["default"] = _container(avro_type)
            fields.append(field)
        out: dict[str, Any] = {"type": "record", "name": name, "namespace": NAMESPACE}
        if "description" in node:
            out["doc"] = node["description"]
        out["fields"] = fields
        return out

    def type(self, node: dict[str, Any], name: str) -> Any:
        """The Avro type of one JSON Schema node; ``name`` names an anonymous enum."""
        if "$ref" in node:
            ref = node["$ref"].rsplit("/", 1)[-1]
            if ref in self.defined:
                return f"{NAMESPACE}.{ref}"
            return self.type(self.defs[ref], ref)
        if "anyOf" in node:
            branches = [self.type(branch, name) for branch in node["anyOf"]]
            if "null" in branches and node.get("default", "") is None:
                branches.remove("null")
                branches.insert(0, "null")
            return branches
        if "enum" in node:
            self.defined.add(name)
            enum: dict[str, Any] = {
                "type": "enum",
                "name": name,
                "namespace": NAMESPACE,
                "symbols": list(node["enum"]),
            }
            if "description" in node:
                enum["doc"] = node["description"]
            return enum
        kind = node.get("type")
        if kind == "object":
            if "properties" in node:
                return self.record(node.get("title", name), node)
            values = node.get("additionalProperties", {})
            return {"type": "map", "values": self.type(values, name)}
        if kind == "array":
            return {"type": "array", "items": self.type(node["items"], name)}
        if kind == "string" and node.get("format") == "date-time":
            return {"type": "long", "logicalType": "timestamp-micros"}
        if kind == "null":
            return "null"
        if kind in _SCALARS:
            return _SCALARS[kind]
        raise ValueError(f"no Avro type for the JSON Schema node {node!r} (at {name})")


def _default(value: Any, avro_type: Any) -> Any:
    # Avro takes a union's default in its first branch's type: the null we put first, or the
    # value itself when the default is not null (then the value's type must lead).
    if isinstance(avro_type, list) and value is not None:
        raise ValueError(f"a union with the non-null default {value!r} is not generated")
    return value


def _container(avro_type: Any) -> dict[str, Any] | list[Any] | None:
    """The empty value of a map or array type (an optional one's default); None otherwise."""
    kind = avro_type.get("type") if isinstance(avro_type, dict) else None
    return {} if kind == "map" else [] if kind == "array" else None


def _camel(field_name: str) -> str:
    return "".join(part.capitalize() for part in field_name.split("_"))
