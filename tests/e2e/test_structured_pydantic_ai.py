"""A pydantic-ai agent with a typed output against the platform, changing only the base URL and key.

pydantic-ai asks for its typed result through a tool it must call (tool_choice "required"); the
node's grammar makes the demo model's call valid, so the agent gets a validated object back.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.e2e.support import ControlPlane
from tests.e2e.test_gateway import make_world
from tests.support.inference_node import InferenceNode

pydantic_ai = pytest.importorskip("pydantic_ai")

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class CityWeather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


def test_agent_with_a_typed_output(server: ControlPlane, node: InferenceNode) -> None:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    world = make_world(node.base_url, limits={"requests_per_minute": 1000, "tokens_per_minute": 1_000_000})
    model = OpenAIChatModel("demo-llama", provider=OpenAIProvider(base_url=server.api_base, api_key=world.raw))
    agent = pydantic_ai.Agent(
        model, output_type=CityWeather, model_settings={"temperature": 0, "max_tokens": 200}, retries=0
    )
    result = agent.run_sync("What is the weather in Paris?")
    assert isinstance(result.output, CityWeather)
    usage = result.usage
    assert usage.requests == 1 and usage.input_tokens > 0 and usage.output_tokens > 0
