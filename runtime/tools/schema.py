"""A tool as the model sees it and as its arguments are checked, both built by pydantic.

``function_tool`` reads a typed function ``fn(ctx, ...)`` (a string in ``Annotated`` is a parameter's
description, the docstring's first paragraph the tool's); ``schema_arguments`` reads an admin's JSON schema.
Either way one pydantic model of the arguments validates what the model sent, accepting the lossless
conversions small models need (12 for "12", "3" for 3), and the JSON schema shown to the model comes from it.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, create_model
from pydantic.json_schema import GenerateJsonSchema

from runtime.tools.context import ToolError
from runtime.types import ToolSchema

# extra arguments are refused (a misspelt name must not pass unnoticed); a number is accepted as text
ARGUMENTS_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
FLAT_TYPES = {"string", "integer", "number", "boolean"}
# a flag must be a JSON true/false: pydantic's lax bool reads "yes" or "off" as a decision, and
# schedule_appointment's confirmed=true books
JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": StrictBool}


@dataclass(frozen=True)
class Tool:
    """One tool: what the model is shown of it, and what checks and runs a call."""

    name: str
    description: str
    parameters: dict  # the JSON schema of the arguments the model sees
    arguments: type[BaseModel]  # validates the arguments the model sent
    call: Callable[..., str]  # call(ctx, **kwargs)

    def schema(self) -> ToolSchema:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check(self, arguments: dict) -> dict:
        """Keyword arguments for ``call`` from what the model sent; raises ToolError. A null optional
        argument means "not given" (small models send them so): the function's default applies."""
        fields = self.arguments.model_fields.values()
        optional = {f.alias for f in fields if not f.is_required()}
        given = {name: value for name, value in arguments.items() if value is not None or name not in optional}
        try:
            return self.arguments.model_validate(given).model_dump(by_alias=True, exclude_unset=True)
        except ValidationError as exc:
            raise ToolError(_problems(exc, [f.alias for f in fields])) from None


def function_tool(fn: Callable[..., str]) -> Tool:
    """Build a tool from ``fn(ctx, ...)``: parameter annotations and docstring become the schema.
    Parameters must be flat (scalars, enums, lists of scalars): nested objects are refused here,
    since small models fill them badly."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = {}
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        annotation, description = _described(hints[param.name])
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (StrictBool if annotation is bool else annotation, default, description)
    arguments = _arguments_model(fn.__name__, fields)
    parameters = _parameters_schema(arguments)
    for name, prop in parameters["properties"].items():
        if not _is_flat(prop):
            raise TypeError(f"{fn.__name__}: unsupported tool parameter type for {name}: {hints[name]!r}")
    doc = inspect.getdoc(fn) or ""
    return Tool(fn.__name__, " ".join(doc.split("\n\n", 1)[0].split()), parameters, arguments, fn)


def schema_arguments(name: str, schema: dict) -> type[BaseModel]:
    """The argument model of an admin-written JSON schema: top-level types, enums and lists of scalars
    are checked; anything else (untyped, nested) passes as sent."""
    required = set(schema.get("required") or [])
    fields = {
        key: (_json_annotation(prop), ... if key in required else None, None)
        for key, prop in (schema.get("properties") or {}).items()
    }
    return _arguments_model(name, fields)


def _described(annotation) -> tuple[Any, str | None]:
    """``Annotated[T, "what it is"]`` -> (T, "what it is"); other annotations have no description."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation, None
    base, *meta = typing.get_args(annotation)
    return base, next((m for m in meta if isinstance(m, str)), None)


def _json_annotation(prop: dict):
    """The annotation of one property of an admin's schema; ``Any`` where it says nothing checkable."""
    if prop.get("enum"):
        return Literal[tuple(prop["enum"])]
    if prop.get("type") == "array" and (item := _json_type(prop.get("items") or {})):
        return list[item]
    return _json_type(prop) or Any


def _json_type(prop: dict):
    kind = prop.get("type")
    return JSON_TYPES.get(kind) if isinstance(kind, str) else None  # a list of types is not checked


def _arguments_model(name: str, fields: dict[str, tuple]) -> type[BaseModel]:
    """A pydantic model of ``{parameter: (annotation, default or ..., description)}``. Its fields are
    aliases, so that any name an admin gives a parameter works, even one pydantic keeps for itself
    (``model_config``, ``_id``)."""
    definitions = {
        f"p{i}": (annotation, Field(default, alias=key, description=description))
        for i, (key, (annotation, default, description)) in enumerate(fields.items())
    }
    return create_model(name, __config__=ARGUMENTS_CONFIG, **definitions)


class _ToolSchema(GenerateJsonSchema):
    """Pydantic's JSON schema trimmed to what the model needs (every token costs prompt time on the
    local model): no titles, no defaults, an optional parameter shown as its type (null means "not
    given", which leaving it out says too)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def nullable_schema(self, schema):
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema):
        return self.generate_inner(schema["schema"])


def _parameters_schema(arguments: type[BaseModel]) -> dict:
    schema = arguments.model_json_schema(schema_generator=_ToolSchema)
    return {"type": "object", "properties": schema["properties"], "required": schema.get("required", [])}


def _is_flat(prop: dict) -> bool:
    if prop.get("type") == "array":
        prop = prop.get("items") or {}
    return "enum" in prop or prop.get("type") in FLAT_TYPES


def _problems(exc: ValidationError, parameters: list[str]) -> str:
    """Everything wrong with a call in one short message, so one retry can fix it: unknown and missing
    names grouped (with the parameters there are), then each bad value in pydantic's words."""
    errors = exc.errors(include_url=False)
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
    problems = [f"unknown argument(s) {', '.join(unknown)} (parameters are: {', '.join(parameters) or 'none'})"] if unknown else []
    problems += [f"missing required argument(s): {', '.join(missing)}"] if missing else []
    problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors
                 if e["type"] not in ("extra_forbidden", "missing")]
    return "; ".join(problems)
