"""LangChain's ChatOpenAI against the platform, changing only the base URL and the key:
`with_structured_output` (json_schema) and `bind_tools` (forced and free tool choice)."""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.e2e.support import ControlPlane
from tests.e2e.test_gateway import make_world
from tests.support.inference_node import InferenceNode

langchain_openai = pytest.importorskip("langchain_openai")

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Add(BaseModel):
    """Add two integers."""

    a: int = Field(ge=-100, le=100)
    b: int = Field(ge=-100, le=100)


@pytest.fixture
def chat(server: ControlPlane, node: InferenceNode) -> Any:
    world = make_world(node.base_url, limits={"requests_per_minute": 1000, "tokens_per_minute": 1_000_000})
    return langchain_openai.ChatOpenAI(
        model="demo-llama", base_url=server.api_base, api_key=world.raw, temperature=0, max_tokens=150, max_retries=0
    )


def test_with_structured_output(chat: Any) -> None:
    for stream in (False, True):
        structured = chat.with_structured_output(Weather, method="json_schema", strict=True)
        answer = structured.invoke("Weather in Paris?") if not stream else list(structured.stream("Weather?"))[-1]
        assert isinstance(answer, Weather), answer
        jsonschema.validate(answer.model_dump(), Weather.model_json_schema())


def test_bind_tools_forced_and_free(chat: Any) -> None:
    forced = chat.bind_tools([Add, Weather], tool_choice="Add", parallel_tool_calls=False)
    message = forced.invoke("What is 2 + 3?")
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "Add" and call["id"].startswith("call_")
    Add.model_validate(call["args"])
    assert message.response_metadata["finish_reason"] == "tool_calls"

    streamed = None
    for chunk in chat.bind_tools([Add], tool_choice="required", parallel_tool_calls=False).stream("2 + 3?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and len(streamed.tool_calls) == 1
    Add.model_validate(streamed.tool_calls[0]["args"])

    free = chat.bind_tools([Add]).invoke("Say hello.")  # tool_choice auto: the demo model writes text
    assert free.tool_calls == [] and isinstance(free.content, str) and free.content
