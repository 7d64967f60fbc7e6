"""Shape checks of response_format and tools, without the grammar library (the gateway runs them)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from wire.protocol import RequestInvalid
from wire.structured import check_response_format, check_tools

FN = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "a-b_1", "strict": True, "schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"anyOf": [{"type": "string"}, True]}}},
    ],
)
def test_good_response_formats(value: Any) -> None:
    check_response_format(value)


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}, "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": []}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "strin"}}},
            "response_format.json_schema.schema.type",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"properties": {"x": 3}}}},
            "response_format.json_schema.schema.properties.x",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"required": "x"}}},
            "response_format.json_schema.schema.required",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"anyOf": []}}},
            "response_format.json_schema.schema.anyOf",
        ),
    ],
)
def test_bad_response_formats_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(RequestInvalid) as caught:
        check_response_format(value)
    assert caught.value.param == param


def test_deep_schema_is_refused() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(RequestInvalid, match="deeper"):
        check_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})


@pytest.mark.parametrize(
    ("tools", "tool_choice", "parallel"),
    [
        (None, None, None),
        (None, "none", None),
        ([FN], "auto", True),
        ([FN], "required", False),
        ([FN], {"type": "function", "function": {"name": "get_weather"}}, None),
        ([{"type": "function", "function": {"name": "noargs"}}], None, None),
    ],
)
def test_good_tools(tools: Any, tool_choice: Any, parallel: Any) -> None:
    check_tools(tools, tool_choice, parallel)


@pytest.mark.parametrize(
    ("tools", "tool_choice", "parallel", "param"),
    [
        ({"type": "function"}, None, None, "tools"),
        ([FN] * 129, None, None, "tools"),
        (["get_weather"], None, None, "tools[0]"),
        ([{"type": "retrieval"}], None, None, "tools[0].type"),
        ([{"type": "function"}], None, None, "tools[0].function"),
        ([{"type": "function", "function": {"name": "has space"}}], None, None, "tools[0].function.name"),
        ([FN, FN], None, None, "tools[1].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            None,
            None,
            "tools[0].function.parameters.type",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}],
            None,
            None,
            "tools[0].function.parameters.properties",
        ),
        ([{"type": "function", "function": {"name": "f", "strict": 1}}], None, None, "tools[0].function.strict"),
        ([FN], {"type": "function", "function": {"name": "other"}}, None, "tool_choice.function.name"),
        ([FN], {"type": "function"}, None, "tool_choice.function.name"),
        ([FN], "always", None, "tool_choice"),
        ([FN], {"type": "tool", "name": "get_weather"}, None, "tool_choice"),
        (None, "required", None, "tool_choice"),
        (None, "auto", None, "tool_choice"),
        ([FN], "auto", "yes", "parallel_tool_calls"),
    ],
)
def test_bad_tools_name_the_field(tools: Any, tool_choice: Any, parallel: Any, param: str) -> None:
    with pytest.raises(RequestInvalid) as caught:
        check_tools(tools, tool_choice, parallel)
    assert caught.value.param == param


def test_wire_loads_neither_torch_nor_llguidance() -> None:
    # wire is imported by the control plane too: the checks must not pull in the node's libraries.
    code = (
        "import sys, wire.protocol, wire.structured, wire.prompt\n"
        "print(sorted(m for m in ('torch', 'llguidance', 'inference') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
