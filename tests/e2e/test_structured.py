"""Structured outputs and tools through both planes with the official `openai` client.

The demo model's weights are random: every JSON answer and every forced tool call below is valid
only because decoding is constrained. Outputs are checked with `jsonschema` against the schema
sent, and every response and chunk against the `openai` package's own pydantic types.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, cast

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from tests.e2e.support import ControlPlane
from tests.e2e.test_gateway import client_for, journal, make_world
from tests.support.inference_node import InferenceNode, demo_model_path

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "alerts": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2},
    },
    "required": ["city", "unit", "days", "alerts"],
    "additionalProperties": False,
}
# Tool schemas stay small: the demo model's context is 1024 tokens of one byte each.
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
    },
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_forecast", "description": "Forecast", "parameters": CITY}},
    {"type": "function", "function": {"name": "add", "description": "Sum", "parameters": ADD, "strict": True}},
]
SCHEMAS = {"get_forecast": CITY, "add": ADD}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True}}


@pytest.fixture
def client(server: ControlPlane, node: InferenceNode) -> openai.OpenAI:
    world = make_world(node.base_url, limits={"requests_per_minute": 1000, "tokens_per_minute": 1_000_000})
    return client_for(server, world.raw)


def create(client: openai.OpenAI, **kwargs: Any) -> ChatCompletion:
    """A non-streamed chat completion, its body validated by the openai package's own type."""
    kwargs.setdefault("temperature", 0)  # greedy unless a test samples: reproducible runs
    raw = client.chat.completions.with_raw_response.create(model="demo-llama", **kwargs)
    body = raw.http_response.json()
    completion = ChatCompletion.model_validate(body)
    for choice in body["choices"]:
        assert "refusal" in choice["message"]  # OpenAI always sends it
    return completion


def stream(client: openai.OpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    chunks = []
    kwargs.setdefault("temperature", 0)
    for chunk in client.chat.completions.create(model="demo-llama", stream=True, **kwargs):
        chunks.append(ChatCompletionChunk.model_validate(chunk.to_dict()))
    return chunks


def streamed_calls(chunks: list[ChatCompletionChunk], index: int = 0) -> tuple[str, list[dict[str, str]], str | None]:
    """(content, calls, finish_reason) of one choice of a stream; checks each call opens as OpenAI's do."""
    content = ""
    calls: list[dict[str, str]] = []
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.index != index:
                continue
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            for part in choice.delta.tool_calls or []:
                if part.id is not None:
                    # First delta of a call: index, id, type, name, and empty arguments.
                    assert part.index == len(calls) and part.type == "function"
                    assert part.function is not None and part.function.name and part.function.arguments == ""
                    calls.append({"id": part.id, "name": part.function.name, "arguments": ""})
                else:
                    assert part.function is not None and part.function.name is None
                    calls[part.index]["arguments"] += part.function.arguments or ""
    return content, calls, finish


# -- response_format ---------------------------------------------------------------------------------


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    for seed in (None, 1, 2):
        extra = {} if seed is None else {"seed": seed, "temperature": 1.0}
        reply = create(client, messages=USER, response_format=RESPONSE_FORMAT, max_tokens=300, **extra)
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content is not None
        jsonschema.validate(json.loads(choice.message.content), FORECAST)


def test_json_schema_stream_validates(client: openai.OpenAI) -> None:
    chunks = stream(client, messages=USER, response_format=RESPONSE_FORMAT, max_tokens=300)
    content, calls, finish = streamed_calls(chunks)
    assert finish == "stop" and not calls
    jsonschema.validate(json.loads(content), FORECAST)


def test_json_object_is_an_object(client: openai.OpenAI) -> None:
    # Any object: with random weights some runs nest until max_tokens ("length"); those that end are objects.
    finished = 0
    for seed in range(4):
        reply = create(
            client, messages=USER, response_format={"type": "json_object"}, max_tokens=200, seed=seed, temperature=1.0
        )
        content = reply.choices[0].message.content or ""
        assert content.startswith("{")
        if reply.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(content), dict)
        else:
            assert reply.choices[0].finish_reason == "length" and len(content) == 200
    assert finished >= 1


def test_max_tokens_cuts_a_structured_answer(client: openai.OpenAI) -> None:
    reply = create(client, messages=USER, response_format=RESPONSE_FORMAT, max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    # Four byte tokens of the only possible start: the schema's first property.
    assert reply.choices[0].message.content == '{"ci'


# -- tools -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_call_validates(client: openai.OpenAI, tool_choice: Any) -> None:
    reply = create(
        client, messages=USER, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=200
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(tool_choice, dict):
        assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_forecast"}}])
def test_forced_call_streams_like_openai(client: openai.OpenAI, tool_choice: Any) -> None:
    chunks = stream(
        client, messages=USER, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=200
    )
    content, calls, finish = streamed_calls(chunks)
    assert finish == "tool_calls" and content == ""
    assert len(calls) == 1
    if isinstance(tool_choice, dict):
        assert calls[0]["name"] == "get_forecast"
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])
    # Arguments arrive in several fragments, not one.
    fragments = [p for c in chunks for ch in c.choices for p in ch.delta.tool_calls or [] if p.id is None]
    assert len(fragments) > 1


def test_parallel_calls_each_validate(client: openai.OpenAI) -> None:
    # parallel_tool_calls defaults to true: the demo model, which never ends on its own, keeps
    # calling until max_tokens; every complete call validates and only the last may be cut.
    reply = create(client, messages=USER, tools=TOOLS, tool_choice="required", max_tokens=200)
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) >= 2
    assert len({c.id for c in calls}) == len(calls)
    complete = calls if reply.choices[0].finish_reason == "tool_calls" else calls[:-1]
    for call in complete:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_choice", ["auto", "none", None])
def test_free_choice_answers_text(client: openai.OpenAI, tool_choice: Any) -> None:
    # The demo model writes text, not a call: content, no tool_calls, finish "length".
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    reply = create(client, messages=USER, tools=TOOLS, max_tokens=12, **extra)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content is not None and len(choice.message.content) == 12
    assert choice.finish_reason == "length"


def test_free_choice_streams_text(client: openai.OpenAI) -> None:
    chunks = stream(client, messages=USER, tools=TOOLS, tool_choice="auto", max_tokens=12)
    content, calls, finish = streamed_calls(chunks)
    assert not calls and len(content) == 12 and finish == "length"


def test_each_of_n_choices_is_constrained(client: openai.OpenAI) -> None:
    reply = create(client, messages=USER, response_format=RESPONSE_FORMAT, n=2, seed=9, temperature=1.0, max_tokens=300)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), FORECAST)
    chunks = stream(
        client,
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False,
        n=2,
        seed=9,
        temperature=1.0,
        max_tokens=200,
    )
    for index in (0, 1):
        _content, calls, finish = streamed_calls(chunks, index)
        assert finish == "tool_calls" and len(calls) == 1 and calls[0]["name"] == "add"
        jsonschema.validate(json.loads(calls[0]["arguments"]), ADD)


def test_logprobs_of_a_constrained_answer_are_finite(client: openai.OpenAI) -> None:
    # Most tokens are impossible under the grammar (-inf): what comes back must still be JSON numbers.
    for stream_it in (False, True):
        kwargs: dict[str, Any] = {
            "messages": USER, "response_format": RESPONSE_FORMAT, "max_tokens": 20, "logprobs": True, "top_logprobs": 5,
        }  # fmt: skip
        if stream_it:
            entries = [e for c in stream(client, **kwargs) for ch in c.choices
                       for e in ((ch.logprobs.content if ch.logprobs is not None else None) or [])]  # fmt: skip
        else:
            logprobs = create(client, **kwargs).choices[0].logprobs
            entries = list(logprobs.content or []) if logprobs is not None else []
        assert len(entries) == 20
        for entry in entries:
            assert -1e9 < entry.logprob <= 0
            assert 1 <= len(entry.top_logprobs) <= 5
            assert all(-1e9 < top.logprob <= 0 for top in entry.top_logprobs)


def test_conversation_with_a_tool_result(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    # One tool: room in the 1024-token context for the call, its result and the answer.
    one_tool = TOOLS[1:]
    first = create(client, messages=USER, tools=one_tool, tool_choice="required", parallel_tool_calls=False,
                   max_tokens=200)  # fmt: skip
    call = (first.choices[0].message.tool_calls or [])[0]
    messages: list[Any] = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    reply = create(client, messages=messages, tools=one_tool, response_format=RESPONSE_FORMAT, max_tokens=200)
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), FORECAST)
    # The prompt the node served is the demo template's rendering of tools, the call and its result.
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_path()), local_files_only=True)
    template_messages = [
        USER[0],
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        messages[2],
    ]
    rendered = tokenizer.apply_chat_template(
        template_messages, tools=one_tool, add_generation_prompt=True, tokenize=False
    )
    assert call.id in rendered and '{"temperature": 21}' in rendered
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


class Sum(BaseModel):
    """Add two integers."""

    a: int
    b: int


class Weather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]
    days: list[int] = Field(max_length=3)


def test_openai_parse_helpers_get_typed_results(client: openai.OpenAI) -> None:
    # What programs written for OpenAI do: a pydantic model as response_format, pydantic tools.
    parsed = client.chat.completions.parse(
        model="demo-llama", messages=cast(Any, USER), response_format=Weather, max_tokens=200, temperature=0
    )
    assert parsed.choices[0].finish_reason == "stop"
    assert isinstance(parsed.choices[0].message.parsed, Weather)

    called = client.chat.completions.parse(
        model="demo-llama",
        messages=cast(Any, USER),
        tools=[openai.pydantic_function_tool(Sum)],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.type == "function" and call.function.name == "Sum"
    assert isinstance(call.function.parsed_arguments, Sum)


# -- bad input ---------------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "browser", "function": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}]},
        "tools[0].function.parameters.properties",
    ),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}},
        "response_format.json_schema.schema.type",
    ),
    # Well shaped, but the grammar library cannot compile it: refused by the node, still a 400.
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "strict": True, "schema": {"type": "string", "format": "no-such-format"}},
            }
        },
        "response_format.json_schema.schema",
    ),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
                    },
                }
            ],
            "tool_choice": "required",
        },
        "tools[0].function.parameters",
    ),
]


def test_bad_structure_is_a_400_naming_the_field_and_nothing_is_billed(
    client: openai.OpenAI, node: InferenceNode
) -> None:
    ids = []
    for fields, param in BAD:
        rid = f"e2e-bad-{uuid.uuid4().hex}"
        ids.append(rid)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="demo-llama", messages=USER, max_tokens=5, extra_headers={"x-request-id": rid}, **fields
            )
        assert bad.value.status_code == 400, fields
        assert bad.value.param == param, (fields, bad.value.message)
        assert bad.value.body is not None and bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    # A good request afterwards is journaled; none of the refused ones are.
    good = f"e2e-good-{uuid.uuid4().hex}"
    client.chat.completions.create(
        model="demo-llama", messages=USER, max_tokens=2, extra_headers={"x-request-id": good}
    )
    deadline = time.monotonic() + 5
    records = journal(node)
    while good not in records and time.monotonic() < deadline:
        time.sleep(0.1)
        records = journal(node)
    assert good in records
    assert not [rid for rid in ids if rid in records]
