"""Tool calls in model text: parsing, OpenAI streaming deltas, and the demo chat template's rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from inference.structured import ToolCallStream, parse_tool_calls

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
]
TWO_CALLS = (
    '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","days":{"n":2}}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
)


def stream_all(text: str, chunk: int, **kwargs: Any) -> tuple[list[dict[str, Any]], ToolCallStream]:
    stream = ToolCallStream(TOOLS, **kwargs)
    deltas: list[dict[str, Any]] = []
    for i in range(0, len(text), chunk):
        deltas += stream.feed(text[i : i + chunk])
    deltas += stream.finish()
    return deltas, stream


def assemble(deltas: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    content = ""
    calls: list[dict[str, Any]] = []
    for delta in deltas:
        # Every delta is a valid OpenAI chunk delta.
        ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        )
        content += delta.get("content", "")
        for part in delta.get("tool_calls", []):
            if "id" in part:
                assert part["index"] == len(calls)
                assert part["function"]["arguments"] == ""
                calls.append({"id": part["id"], "name": part["function"]["name"], "arguments": ""})
            else:
                assert "id" not in part and "name" not in part["function"]
                calls[part["index"]]["arguments"] += part["function"]["arguments"]
    return content, calls


def test_parse_two_calls() -> None:
    content, calls = parse_tool_calls(TWO_CALLS, TOOLS)
    assert content is None
    assert [c["function"]["name"] for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": {"n": 2}}
    assert json.loads(calls[1]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)


def test_text_before_a_call_is_content() -> None:
    content, calls = parse_tool_calls("Let me look.\n" + TWO_CALLS, TOOLS)
    assert content == "Let me look.\n"
    assert len(calls) == 2


def test_plain_text_has_no_calls() -> None:
    text = "no calls here, just <tool and </tool_call> text"
    assert parse_tool_calls(text, TOOLS) == (text, [])


@pytest.mark.parametrize(
    "block",
    [
        '<tool_call>\n{"name":"launch_missiles","arguments":{}}\n</tool_call>',  # not a tool we offered
        "<tool_call>\nnot json at all\n</tool_call>",
    ],
)
def test_a_block_that_is_not_a_valid_call_stays_content(block: str) -> None:
    assert parse_tool_calls(block, TOOLS) == (block, [])


def test_arguments_before_name_are_parsed_whole() -> None:
    text = '<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>'
    _content, calls = parse_tool_calls(text, TOOLS)
    assert calls[0]["function"]["name"] == "add"
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1}


def test_parallel_false_keeps_the_first_call_only() -> None:
    content, calls = parse_tool_calls(TWO_CALLS, TOOLS, max_calls=1)
    assert content is None
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_stream_deltas_match_the_whole_parse(chunk: int) -> None:
    text = "Sure.\n" + TWO_CALLS
    deltas, stream = stream_all(text, chunk)
    assert stream.saw_tool_call
    content, calls = assemble(deltas)
    assert content == "Sure.\n"
    whole_content, whole_calls = parse_tool_calls(text, TOOLS)
    assert content == whole_content
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in whole_calls
    ]
    # The first delta of a call carries index, id, type and name with empty arguments, as OpenAI's.
    first = next(d for d in deltas if "tool_calls" in d)["tool_calls"][0]
    assert set(first) == {"index", "id", "type", "function"} and first["type"] == "function"


def test_stream_sends_arguments_in_fragments() -> None:
    deltas, _ = stream_all(TWO_CALLS, 4)
    fragments = [d for d in deltas if "tool_calls" in d and "id" not in d["tool_calls"][0]]
    assert len(fragments) > 4


def test_stream_cut_by_max_tokens_sends_the_partial_arguments() -> None:
    deltas, stream = stream_all('<tool_call>\n{"name":"add","arguments":{"a":12', 5)
    _content, calls = assemble(deltas)
    assert stream.saw_tool_call
    assert calls[0]["arguments"] == '{"a":12'


def test_a_call_cut_in_its_head_after_complete_calls_is_dropped() -> None:
    content, calls = parse_tool_calls(TWO_CALLS + '\n<tool_call>\n{"na', TOOLS)
    assert content is None and len(calls) == 2
    # Alone, it is what the model wrote: content.
    assert parse_tool_calls('<tool_call>\n{"na', TOOLS) == ('<tool_call>\n{"na', [])


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_a_close_marker_inside_an_argument_string_is_text(chunk: int) -> None:
    text = '<tool_call>\n{"name":"add","arguments":{"note":"a \\" </tool_call> b","a":1}}\n</tool_call>'
    deltas, _ = stream_all(text, chunk)
    _content, calls = assemble(deltas)
    assert json.loads(calls[0]["arguments"]) == {"note": 'a " </tool_call> b', "a": 1}


def test_stream_of_plain_text_is_content_only() -> None:
    deltas, stream = stream_all("hello <tool world", 3)
    assert not stream.saw_tool_call
    assert assemble(deltas) == ("hello <tool world", [])


@pytest.fixture(scope="module")
def tokenizer(demo_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model), local_files_only=True)


def test_template_renders_tools_calls_and_results(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "5C"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    for tool in TOOLS:  # the functions, one compact JSON line each
        assert "\n" + json.dumps(tool["function"], separators=(",", ":")) + "\n" in text
    # The assistant's calls render in exactly the format the parser reads back.
    turn = text.split("<|assistant|>\n")[1].split("<|tool|>")[0].rstrip("\n")
    content, calls = parse_tool_calls(turn, TOOLS)
    assert content is None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert '<tool_response id="call_1">\n20C\n</tool_response>' in text
    assert '<tool_response id="call_2">\n5C\n</tool_response>' in text
    assert text.endswith("<|assistant|>\n")


def test_template_without_tools_is_unchanged(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<s><|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\n"
