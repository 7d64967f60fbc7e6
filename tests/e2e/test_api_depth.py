"""The OpenAI API's depth through both planes as real processes, with the official `openai` client:
n, logprobs, echo, seeds, stop, penalties and logit_bias, the null/no-op values clients serialise,
response shapes checked against the `openai` package's own types, and bad input refused unbilled."""

from __future__ import annotations

import typing
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

import openai
import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel
from transformers import AutoTokenizer

from tests.e2e.support import ControlPlane
from tests.e2e.test_gateway import World, client_for, journal, make_world
from tests.support.inference_node import InferenceNode, demo_model_path

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
MSG = [{"role": "user", "content": "Tell me something"}]


@pytest.fixture
def world(node: InferenceNode, server: ControlPlane) -> World:
    return make_world(node.base_url)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(demo_model_path()), local_files_only=True)


def _required(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.is_required()}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def assert_shape(model: type[BaseModel], payload: Any) -> None:
    """Valid for the openai type, and every field it requires is really sent (recursively)."""
    model.model_validate(payload)
    _present(model, payload)


def _present(model: type[BaseModel], payload: Any) -> None:
    assert isinstance(payload, dict), (model.__name__, payload)
    missing = _required(model) - set(payload)
    assert not missing, f"{model.__name__} lacks {missing}"
    for name, f in model.model_fields.items():
        value = payload.get(f.alias or name)
        inner = _models_in(f.annotation)
        if value is None or not inner:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _present(inner[0], item)


def _raw(client: openai.OpenAI, kind: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    api = client.chat.completions if kind == "chat" else client.completions
    response = api.with_raw_response.create(**kwargs)
    return response, orjson.loads(response.http_response.content)


def _events(client: openai.OpenAI, kind: str, **kwargs: Any) -> list[dict[str, Any]]:
    api = client.chat.completions if kind == "chat" else client.completions
    with api.with_streaming_response.create(stream=True, **kwargs) as response:
        assert response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line[6:]) for line in lines[:-1]]


def test_n_choices_with_logprobs_in_openai_shapes(server: ControlPlane, world: World) -> None:
    client = client_for(server, world.raw)
    response, body = _raw(
        client,
        "chat",
        model="demo-llama",
        messages=MSG,
        n=3,
        max_tokens=8,
        temperature=1.0,
        seed=5,
        logprobs=True,
        top_logprobs=4,
    )
    assert_shape(ChatCompletion, body)
    assert response.headers["x-request-id"] and int(response.headers["openai-processing-ms"]) >= 0
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) > 1  # three samples, not one thrice
    for choice in body["choices"]:
        assert choice["message"]["refusal"] is None
        content = choice["logprobs"]["content"]
        assert content and all(t["logprob"] <= 0 for t in content)
        assert all(len(t["top_logprobs"]) == 4 for t in content)
        assert all(a["logprob"] <= 0 for t in content for a in t["top_logprobs"])
    usage = body["usage"]
    assert usage["completion_tokens"] == sum(len(c["logprobs"]["content"]) for c in body["choices"])
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert body["system_fingerprint"]

    events = _events(
        client,
        "chat",
        model="demo-llama",
        messages=MSG,
        n=2,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for event in events:
        assert_shape(ChatCompletionChunk, event)
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["logprobs"]:
                assert all(len(t["top_logprobs"]) == 2 for t in choice["logprobs"]["content"])
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 16
    assert finishes == {0: "length", 1: "length"}
    _, greedy = _raw(client, "chat", model="demo-llama", messages=MSG, max_tokens=8, temperature=0)
    assert texts == {0: greedy["choices"][0]["message"]["content"]} | {1: greedy["choices"][0]["message"]["content"]}


def test_completions_echo_logprobs_and_stream(server: ControlPlane, world: World, tokenizer: Any) -> None:
    client = client_for(server, world.raw)
    prompt = "Once upon"
    _, body = _raw(
        client,
        "completions",
        model="demo-llama",
        prompt=prompt,
        max_tokens=6,
        temperature=0,
        echo=True,
        logprobs=2,
        n=2,
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    for choice in body["choices"]:
        # The prompt's first token has no logprob: null, as OpenAI's (and vLLM's) echo sends it.
        # The openai package types these lists as numbers only, so it is checked without that entry.
        lp = choice["logprobs"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    first_dropped = orjson.loads(orjson.dumps(body))
    for choice in first_dropped["choices"]:
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            del choice["logprobs"][name][0]
    assert_shape(Completion, first_dropped)
    for choice in body["choices"]:
        assert choice["text"].startswith(prompt) and len(choice["text"]) > len(prompt)
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(prompt_ids) + 6
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert all(v <= 0 for v in lp["token_logprobs"][1:])
        assert all(len(top) <= 2 and top for top in lp["top_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 12
    # max_tokens 0 with echo scores the prompt alone (what evaluation harnesses send).
    _, scored = _raw(
        client, "completions", model="demo-llama", prompt=prompt, max_tokens=0, temperature=0, echo=True, logprobs=1
    )
    assert scored["choices"][0]["text"] == prompt and scored["choices"][0]["finish_reason"] == "length"
    assert (
        scored["choices"][0]["logprobs"]["token_logprobs"]
        == body["choices"][0]["logprobs"]["token_logprobs"][: len(prompt_ids)]
    )
    assert scored["usage"]["completion_tokens"] == 0 and scored["usage"]["prompt_tokens"] == len(prompt_ids)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="demo-llama", prompt=prompt, max_tokens=0)
    assert bad.value.param == "max_tokens"
    events = _events(client, "completions", model="demo-llama", prompt=prompt, max_tokens=6, temperature=0, echo=True)
    for event in events:
        # A stream's chunks carry finish_reason null until the last (as OpenAI's do); the openai
        # package parses chunks with the Completion type without validating, and that type
        # admits no null there, so the chunks are checked with the final value filled in.
        final = orjson.loads(orjson.dumps(event))
        for choice in final["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "length"
        assert_shape(Completion, final)
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == "length"
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == body["choices"][0]["text"]


def test_seed_reproduces_and_stop_cuts(server: ControlPlane, world: World) -> None:
    client = client_for(server, world.raw)
    kwargs: dict[str, Any] = {"model": "demo-llama", "messages": MSG, "max_tokens": 24, "temperature": 1.0}
    a = client.chat.completions.create(seed=42, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=42, **kwargs).choices[0].message.content
    c = client.chat.completions.create(seed=43, **kwargs).choices[0].message.content
    assert a == b and a != c
    full = client.chat.completions.create(model="demo-llama", messages=MSG, max_tokens=40, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text[15:18]
    cut = client.chat.completions.create(model="demo-llama", messages=MSG, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_penalties_and_logit_bias_steer_greedy_output(server: ControlPlane, world: World, tokenizer: Any) -> None:
    client = client_for(server, world.raw)

    def greedy(**extra: Any) -> str:
        answer = client.completions.create(
            model="demo-llama", prompt="again and again", max_tokens=40, temperature=0, **extra
        )
        return answer.choices[0].text

    def token_of(char: str) -> int:
        return int(tokenizer(char, add_special_tokens=False)["input_ids"][-1])

    plain = greedy()
    common = Counter(plain).most_common(1)[0][0]
    banned = greedy(logit_bias={str(token_of(common)): -100})
    assert common not in banned and banned != plain
    absent = next(ch for ch in "qzxjkvwy" if ch not in plain)
    assert greedy(logit_bias={str(token_of(absent)): 100}) == absent * 40
    repeats = len(plain) - len(set(plain))
    penalised = greedy(frequency_penalty=2.0)
    assert len(penalised) - len(set(penalised)) < repeats
    assert len(set(greedy(presence_penalty=2.0))) > len(set(plain))


def test_null_and_no_op_values_are_accepted(server: ControlPlane, world: World) -> None:
    body = {
        "model": "demo-llama",
        "messages": MSG,
        "max_tokens": 4,
        "tools": None,
        "tool_choice": None,
        "parallel_tool_calls": None,
        "logprobs": False,
        "top_logprobs": None,
        "response_format": {"type": "text"},
        "n": 1,
        "stream": None,
        "stream_options": None,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": None,
        "seed": None,
        "stop": None,
        "user": "end-user-7",
        "safety_identifier": "hash-7",
        "metadata": {"team": "search"},
        "audio": None,
        "modalities": ["text"],
        "store": False,
        "service_tier": "auto",
        "functions": None,
        "function_call": None,
    }
    request = urllib.request.Request(
        server.api_base + "/chat/completions",
        data=orjson.dumps(body),
        headers={"authorization": f"Bearer {world.raw}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = orjson.loads(response.read())
    assert_shape(ChatCompletion, answer)
    assert answer["choices"][0]["logprobs"] is None


BAD = [
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"n": 9}, "n"),
    ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
    ({"logit_bias": {"65": 101}}, "logit_bias"),
    ({"logit_bias": {"99999": 5}}, "logit_bias"),  # outside the model's vocabulary: the node says so
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"team": "x" * 513}}, "metadata"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
]


@pytest.mark.parametrize(("extra", "param"), BAD)
def test_bad_input_is_a_400_naming_the_field_and_unbilled(
    server: ControlPlane, node: InferenceNode, world: World, extra: dict[str, Any], param: str
) -> None:
    client = client_for(server, world.raw)
    rid = f"bad-{uuid.uuid4()}"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="demo-llama", messages=MSG, max_tokens=4, extra_body=extra, extra_headers={"x-request-id": rid}
        )
    assert bad.value.param == param, bad.value.message
    assert_shape(openai.types.ErrorObject, bad.value.body)
    assert rid not in journal(node)  # nothing ran, nothing to bill


def test_unknown_paths_and_methods_answer_json(server: ControlPlane, world: World) -> None:
    for method, path, status in (("GET", "/chat/completions", 405), ("POST", "/no/such/thing", 404)):
        request = urllib.request.Request(
            server.api_base + path,
            data=b"{}" if method == "POST" else None,
            method=method,
            headers={"authorization": f"Bearer {world.raw}"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == status
        assert answer.value.headers["content-type"] == "application/json"
        assert set(orjson.loads(answer.value.read())) == {"error"}


@pytest.mark.parametrize(
    ("messages", "param", "code"),
    [
        ([{"role": "assistant", "content": "I start"}], "messages", "invalid_value"),  # the template refuses
        ([{"role": "user", "content": "x" * 3000}], "messages", "context_length_exceeded"),
    ],
)
def test_prompts_the_model_cannot_take_are_client_errors(
    server: ControlPlane, node: InferenceNode, world: World, messages: list[dict[str, str]], param: str, code: str
) -> None:
    client = client_for(server, world.raw)
    rid = f"prompt-{uuid.uuid4()}"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="demo-llama",
            messages=messages,
            max_tokens=2,
            extra_headers={"x-request-id": rid},  # type: ignore[arg-type]
        )
    assert (bad.value.param, bad.value.code) == (param, code)
    assert rid not in journal(node)
