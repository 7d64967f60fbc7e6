"""Grammar constraints on the real demo tokenizer and model: whatever the weights, the output parses
and validates against the schema (jsonschema), and a bad schema is a RequestInvalid naming it."""

from __future__ import annotations

import datetime
import enum
import inspect
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from inference.structured import Structure, parse_tool_calls, structure_for
from wire.protocol import RequestInvalid

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "tags", "hourly"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "score": {"type": "number"},
        "kind": {"anyOf": [{"type": "null"}, {"const": "x"}]},
    },
    "required": ["person", "score", "kind"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
]


@pytest.fixture(scope="module")
def model(demo_model: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model), local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(demo_model), local_files_only=True).eval()
    return tokenizer, lm


def generate(
    model: tuple[Any, Any], structure: Structure, *, max_tokens: int = 400, seed: int | None = None
) -> tuple[str, str]:
    """Decode with the constraint the way an engine does (mask, pick, advance); (text, finish)."""
    import torch

    tokenizer, lm = model
    constraint = structure.new_constraint()
    ids = tokenizer("<s><|user|>\nanswer\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    out: list[int] = []
    past = None
    step = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(max_tokens):
            result = lm(input_ids=step, use_cache=True, **{cache_kw: past})
            past = result.past_key_values
            logits = result.logits[0, -1]
            logits = logits.masked_fill(~constraint.allowed_mask(), float("-inf"))
            if generator is None:
                token = int(torch.argmax(logits))
            else:
                token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            if token == tokenizer.eos_token_id:
                return tokenizer.decode(out), "stop"
            constraint.advance(token)
            out.append(token)
            if constraint.is_finished():
                return tokenizer.decode(out), "stop"
            step = torch.tensor([[token]])
    return tokenizer.decode(out), "length"


def structure(model: tuple[Any, Any], **kwargs: Any) -> Structure:
    fields: dict[str, Any] = {"response_format": None, "tools": None, "tool_choice": None, "parallel_tool_calls": None}
    fields.update(kwargs)
    built = structure_for(**fields, tokenizer=model[0], vocab_size=model[1].config.vocab_size)
    assert built is not None
    return built


@pytest.mark.parametrize("schema", [WEATHER, NESTED], ids=["flat", "nested"])
@pytest.mark.parametrize("seed", [None, 7, 11])
def test_json_schema_output_validates(model: tuple[Any, Any], schema: dict[str, Any], seed: int | None) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    text, finish = generate(model, structure(model, response_format=rf), seed=seed)
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_unconstrained_demo_output_is_not_json(model: tuple[Any, Any]) -> None:
    # The baseline the constraint is measured against: the same model, left alone, writes no JSON.
    tokenizer, lm = model
    ids = tokenizer("<s><|user|>\nanswer\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    out = lm.generate(
        __import__("torch").tensor([ids]), max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    text = tokenizer.decode(out[0, len(ids) :])
    with pytest.raises(ValueError):
        json.loads(text)


def test_json_object_is_an_object(model: tuple[Any, Any]) -> None:
    text, finish = generate(model, structure(model, response_format={"type": "json_object"}), seed=3)
    assert finish == "stop"
    assert isinstance(json.loads(text), dict)


def test_max_tokens_cuts_a_long_answer(model: tuple[Any, Any]) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER}}
    text, finish = generate(model, structure(model, response_format=rf), max_tokens=5)
    assert finish == "length"
    assert text.startswith('{"')


def test_text_and_free_tools_need_no_constraint(model: tuple[Any, Any]) -> None:
    for kwargs in (
        {"response_format": {"type": "text"}},
        {"tools": TOOLS, "tool_choice": "auto"},
        {"tools": TOOLS, "tool_choice": "none"},
        {"tools": TOOLS},
    ):
        assert (
            structure_for(
                **{"response_format": None, "tools": None, "tool_choice": None, "parallel_tool_calls": None, **kwargs},
                tokenizer=model[0],
            )
            is None
        )


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_single_call_validates(model: tuple[Any, Any], tool_choice: Any) -> None:
    built = structure(model, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False)
    assert built.tool_mode
    text, finish = generate(model, built)
    assert finish == "stop", text
    content, calls = parse_tool_calls(text, TOOLS, max_calls=1)
    assert content is None
    assert len(calls) == 1
    call = calls[0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    if isinstance(tool_choice, dict):
        assert call["function"]["name"] == "get_weather"
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call["function"]["name"])
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_forced_parallel_calls_all_validate(model: tuple[Any, Any]) -> None:
    # Parallel calls: the demo model never ends on its own, so the grammar's "another call" is taken
    # until max_tokens; every complete call still validates, and only the last may be cut.
    built = structure(model, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    text, _finish = generate(model, built, max_tokens=300, seed=5)
    _content, calls = parse_tool_calls(text, TOOLS)
    assert len(calls) >= 2
    for call in calls[:-1]:
        assert call["function"]["name"] == "add"
        jsonschema.validate(json.loads(call["function"]["arguments"]), TOOLS[1]["function"]["parameters"])


def test_vllm_params_pass_the_schema_through(model: tuple[Any, Any]) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER}}
    assert structure(model, response_format=rf).vllm_params() == {"json": WEATHER}
    assert structure(model, response_format={"type": "json_object"}).vllm_params() == {"json_object": True}
    forced = structure(model, tools=TOOLS, tool_choice="required").vllm_params()
    assert set(forced) == {"grammar"} and "%json" in forced["grammar"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nope"}}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "strict": True, "schema": {"type": "string", "format": "no-such"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "tools": [
                    TOOLS[0],
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
                        },
                    },
                ],
                "tool_choice": "required",
            },
            "tools[1].function.parameters",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_uncompilable_requests_name_the_field(model: tuple[Any, Any], kwargs: dict[str, Any], param: str) -> None:
    fields: dict[str, Any] = {"response_format": None, "tools": None, "tool_choice": None, "parallel_tool_calls": None}
    with pytest.raises(RequestInvalid) as caught:
        structure_for(**{**fields, **kwargs}, tokenizer=model[0])
    assert caught.value.param == param


def test_mask_is_cheap_to_ask_for(model: tuple[Any, Any]) -> None:
    # The mask is a fresh view of one preallocated buffer: the right size, bool, on the CPU.
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER}}
    constraint = structure(model, response_format=rf).new_constraint()
    mask = constraint.allowed_mask()
    assert mask.dtype.is_floating_point is False and mask.shape == (model[1].config.vocab_size,)
    allowed = [model[0].decode([i]) for i in mask.nonzero().flatten().tolist()]
    assert allowed == ["{"]


def test_batch_masker_equals_the_row_masks(model: tuple[Any, Any]) -> None:
    import torch

    from inference.structured import BatchMasker

    tokenizer, lm = model
    vocab = lm.config.vocab_size
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": NESTED}}
    built = structure(model, response_format=rf)
    forced = structure(model, tools=TOOLS, tool_choice="required")
    # Rows in different grammar states: fresh, inside a string, a tool call half way, unconstrained.
    rows: list[Any] = [built.new_constraint(), built.new_constraint(), forced.new_constraint(), None]
    for token in tokenizer('{"person":{"name":"Al', add_special_tokens=False)["input_ids"]:
        rows[1].advance(token)
    for token in tokenizer('<tool_call>\n{"name":"add","arguments":{"a":1', add_special_tokens=False)["input_ids"]:
        rows[2].advance(token)
    failed = built.new_constraint()
    failed.advance(tokenizer("x", add_special_tokens=False)["input_ids"][0])  # not JSON: the matcher fails
    rows.append(failed)
    logits = torch.randn(len(rows), vocab)
    masked = logits.clone()
    masker = BatchMasker(vocab)
    assert masker.apply(masked, rows) == [0, 1, 2, 4]
    for i, row in enumerate(rows):
        expected = logits[i] if row is None else logits[i].masked_fill(~row.allowed_mask(), float("-inf"))
        assert torch.equal(masked[i], expected), i
    assert torch.isfinite(masked[4]).nonzero().flatten().tolist() == [tokenizer.eos_token_id]
    # The buffer is reused and grows: a bigger batch after a smaller one.
    many = [built.new_constraint() for _ in range(9)]
    wide = torch.randn(9, vocab)
    assert masker.apply(wide, many) == list(range(9))
    assert all(torch.isfinite(wide[i]).sum() == 1 for i in range(9))  # only "{" at the start


class _Unit(enum.StrEnum):
    C = "celsius"
    F = "fahrenheit"


class _Day(BaseModel):
    date: datetime.date
    high: int = Field(ge=-50, le=60)
    note: str | None = Field(max_length=8)


class _Forecast(BaseModel):
    city: str = Field(description="City name", max_length=12)
    unit: _Unit
    days: list[_Day] = Field(max_length=2)


def test_pydantic_schemas_with_defs_as_the_openai_client_sends_them(model: tuple[Any, Any]) -> None:
    # `client.chat.completions.parse(response_format=Model)` and `openai.pydantic_function_tool(Model)`
    # send strict schemas whose nested models are "$ref": "#/$defs/..." references.
    import openai
    from openai.lib._pydantic import to_strict_json_schema

    schema = to_strict_json_schema(_Forecast)
    assert "$defs" in schema
    rf = {"type": "json_schema", "json_schema": {"name": "Forecast", "schema": schema, "strict": True}}
    text, finish = generate(model, structure(model, response_format=rf), seed=4)
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)
    _Forecast.model_validate_json(text)

    tool: Any = openai.pydantic_function_tool(_Forecast)
    built = structure(model, tools=[tool], tool_choice="required", parallel_tool_calls=False)
    text, finish = generate(model, built, seed=4)
    assert finish == "stop", text
    _content, calls = parse_tool_calls(text, [tool])
    _Forecast.model_validate_json(calls[0]["function"]["arguments"])


def test_a_recursive_parameters_schema(model: tuple[Any, Any]) -> None:
    # "#" inside the parameters means the parameters schema itself, wherever the call puts it.
    tree = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 4},
            "children": {"type": "array", "items": {"$ref": "#"}, "maxItems": 1},
        },
        "required": ["label", "children"],
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": "tree", "parameters": tree}}]
    text, finish = generate(model, structure(model, tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert finish == "stop", text
    _content, calls = parse_tool_calls(text, tools)
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), tree)


def test_a_structure_is_compiled_once_per_request_shape(model: tuple[Any, Any]) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER, "strict": True}}
    first = structure(model, response_format=rf)
    assert structure(model, response_format=json.loads(json.dumps(rf))) is first
    other = {"type": "json_schema", "json_schema": {"name": "a", "schema": NESTED, "strict": True}}
    assert structure(model, response_format=other) is not first
    forced = structure(model, tools=TOOLS, tool_choice="required")
    assert structure(model, tools=TOOLS, tool_choice="required") is forced
    assert structure(model, tools=TOOLS, tool_choice="required", parallel_tool_calls=False) is not forced
    # Sequences of one cached structure do not share grammar state.
    a, b = first.new_constraint(), first.new_constraint()
    a.advance(model[0]("{", add_special_tokens=False)["input_ids"][0])
    assert [model[0].decode([i]) for i in b.allowed_mask().nonzero().flatten().tolist()] == ["{"]
    # A schema that does not compile is refused every time, not remembered as good.
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nope"}}}
    for _ in range(2):
        with pytest.raises(RequestInvalid):
            structure(model, response_format=bad)


def test_without_a_tokenizer_only_the_vllm_pass_through_is_built() -> None:
    # A vLLM node: the grammar is checked and handed to vLLM, no matcher is built here.
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER}}
    fields: dict[str, Any] = {"tools": None, "tool_choice": None, "parallel_tool_calls": None, "tokenizer": None}
    built = structure_for(response_format=rf, **fields)
    assert built is not None and built.vllm_params() == {"json": WEATHER}
    with pytest.raises(RuntimeError):
        built.new_constraint()
    with pytest.raises(RequestInvalid) as bad:
        structure_for(
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nope"}}}, **fields
        )
    assert bad.value.param == "response_format.json_schema.schema"


def test_a_slow_tokenizer_is_a_clear_400_not_a_crash(demo_model: Path) -> None:
    class SlowTokenizer:  # what llguidance refuses: not a fast (Rust) tokenizer
        eos_token_id = 0

    with pytest.raises(RequestInvalid, match="not available for this model") as refused:
        structure_for(
            response_format={"type": "json_object"},
            tools=None,
            tool_choice=None,
            parallel_tool_calls=None,
            tokenizer=SlowTokenizer(),
        )
    assert refused.value.param == "response_format"
