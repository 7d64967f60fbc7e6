"""Shape checks for `response_format`, `tools` and `tool_choice`, shared by both planes.

Pure Python on purpose: the gateway refuses a malformed schema or tool list with a 400 naming the
field before anything is forwarded. Whether the grammar library can compile a well-shaped schema
is decided on the node (inference/structured), which answers 400 too.
"""

from __future__ import annotations

import re
from typing import Any

from wire.protocol import RequestInvalid

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "definitions", "patternProperties")
MAX_TOOLS = 128  # OpenAI's limit
MAX_SCHEMA_DEPTH = 32


def _fail(param: str, message: str) -> RequestInvalid:
    return RequestInvalid(f"{param}: {message}", param=param, code="invalid_value")


def check_schema(schema: Any, param: str, depth: int = 0) -> None:
    """A JSON schema's shape: keywords that hold schemas hold schemas, `type` names JSON types."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _fail(param, "a JSON schema must be an object")
    if depth > MAX_SCHEMA_DEPTH:
        raise _fail(param, f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
            raise _fail(f"{param}.type", f"{kind!r} is not a JSON schema type ({', '.join(sorted(_JSON_TYPES))})")
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise _fail(f"{param}.required", "must be a list of property names")
    enum = schema.get("enum")
    if enum is not None and not (isinstance(enum, list) and enum):
        raise _fail(f"{param}.enum", "must be a non-empty list")
    for key in _SUBSCHEMA_KEYS:
        if key in schema:
            check_schema(schema[key], f"{param}.{key}", depth + 1)
    for key in _SUBSCHEMA_LIST_KEYS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, list) or not value:
                raise _fail(f"{param}.{key}", "must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                check_schema(sub, f"{param}.{key}[{i}]", depth + 1)
    for key in _SUBSCHEMA_MAP_KEYS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, dict):
                raise _fail(f"{param}.{key}", "must be an object of schemas")
            for name, sub in value.items():
                check_schema(sub, f"{param}.{key}.{name}", depth + 1)
    ref = schema.get("$ref")
    if ref is not None and not isinstance(ref, str):
        raise _fail(f"{param}.$ref", "must be a string")


def check_response_format(value: Any) -> None:
    """`response_format`: text, json_object, or json_schema with a name and a schema."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail("response_format", "must be an object")
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise _fail("response_format.type", f"{kind!r} is not one of 'text', 'json_object', 'json_schema'")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise _fail("response_format.json_schema", "is required with type 'json_schema' and must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail("response_format.json_schema.name", "must be 1-64 letters, digits, underscores or dashes")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise _fail("response_format.json_schema.strict", "must be a boolean")
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise _fail("response_format.json_schema.description", "must be a string")
    if spec.get("schema") is not None:
        check_schema(spec["schema"], "response_format.json_schema.schema")


def check_tools(tools: Any, tool_choice: Any, parallel_tool_calls: Any = None) -> None:
    """`tools` (functions with unique names and well-shaped parameter schemas), `tool_choice`
    (none, auto, required, or a function among `tools`) and `parallel_tool_calls`."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _fail("parallel_tool_calls", "must be a boolean")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "must be a list of tools")
        if len(tools) > MAX_TOOLS:
            raise _fail("tools", f"at most {MAX_TOOLS} tools are allowed")
        for i, tool in enumerate(tools):
            names.append(_check_tool(tool, f"tools[{i}]", names))
    if tool_choice is None or tool_choice == "none":
        return
    if tool_choice in ("auto", "required"):
        if not names:
            raise _fail("tool_choice", f"{tool_choice!r} is only allowed when tools are given")
        return
    if isinstance(tool_choice, str):
        raise _fail("tool_choice", f"{tool_choice!r} is not one of 'none', 'auto', 'required' or a named function")
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        raise _fail("tool_choice", "must be 'none', 'auto', 'required' or {'type': 'function', 'function': {...}}")
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise _fail("tool_choice.function.name", "is required")
    if name not in names:
        raise _fail("tool_choice.function.name", f"no function named {name!r} in tools")


def _check_tool(tool: Any, param: str, seen: list[str]) -> str:
    if not isinstance(tool, dict):
        raise _fail(param, "must be an object")
    if tool.get("type") != "function":
        raise _fail(f"{param}.type", f"{tool.get('type')!r} is not supported (only 'function')")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _fail(f"{param}.function", "is required and must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(f"{param}.function.name", "must be 1-64 letters, digits, underscores or dashes")
    if name in seen:
        raise _fail(f"{param}.function.name", f"{name!r} is defined twice")
    if function.get("description") is not None and not isinstance(function["description"], str):
        raise _fail(f"{param}.function.description", "must be a string")
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise _fail(f"{param}.function.strict", "must be a boolean")
    parameters = function.get("parameters")
    if parameters is not None:
        check_schema(parameters, f"{param}.function.parameters")
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise _fail(f"{param}.function.parameters.type", "a function's parameters must be an object schema")
    return name
