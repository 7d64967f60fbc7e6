"""How the OpenAPI document describes the request fields typed loosely in `wire.protocol`
(`response_format`, `tools`, `tool_choice`): `wire.structured` checks them, JSON schemas included."""

from __future__ import annotations

from typing import Any

# The document's view of the loosely typed fields (wire.structured checks them, JSON schemas included).
_FUNCTION_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
RESPONSE_FORMAT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": ["text", "json_object", "json_schema"]},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": _FUNCTION_NAME,
                        "description": {"type": "string"},
                        "schema": {"type": "object", "description": "A JSON schema the output must follow."},
                        "strict": {"type": ["boolean", "null"]},
                    },
                },
            },
            "description": "`json_schema` is required with type `json_schema` and allowed only there.",
        },
        {"type": "null"},
    ]
}
TOOLS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": _FUNCTION_NAME,
                            "description": {"type": "string"},
                            "parameters": {"type": "object", "description": "A JSON schema of the arguments."},
                            "strict": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
        },
        {"type": "null"},
    ]
}
TOOL_CHOICE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            },
            "description": "Must name a function in `tools`.",
        },
        {"type": "null"},
    ]
}
