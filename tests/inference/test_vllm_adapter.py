"""The vLLM adapter without vLLM: it imports, and every sampling control reaches vLLM's
SamplingParams. vLLM itself is never installed here, so a stand-in module records what it gets."""

from __future__ import annotations

import enum
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from inference.engine.base import EngineRequest, SamplingParams, TokenLogprob


def test_the_adapter_imports_without_vllm() -> None:
    code = "import sys, inference.engine.vllm_engine, inference.app; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Recorded:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = types.ModuleType("vllm")
    sampling = types.ModuleType("vllm.sampling_params")

    class RequestOutputKind(enum.Enum):
        DELTA = 1

    root.SamplingParams = _Recorded  # type: ignore[attr-defined]
    sampling.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    sampling.StructuredOutputsParams = _Recorded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", root)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    yield


def test_every_control_reaches_vllm_sampling_params(fake_vllm: None) -> None:
    from inference.engine.vllm_engine import sampling_params

    params = SamplingParams(
        max_tokens=12,
        temperature=0.7,
        top_p=0.9,
        seed=5,
        stop=("END",),
        n=3,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias=((7, -100.0), (9, 20.0)),
        logprobs=4,
        prompt_logprobs=2,
        guided={"json": {"type": "object"}},
    )
    got = sampling_params(params).kwargs
    assert got["n"] == 3 and got["max_tokens"] == 12 and got["seed"] == 5
    assert (got["temperature"], got["top_p"]) == (0.7, 0.9)
    assert (got["presence_penalty"], got["frequency_penalty"]) == (0.5, -0.25)
    assert got["logit_bias"] == {7: -100.0, 9: 20.0}
    assert got["stop"] == ["END"]
    assert (got["logprobs"], got["prompt_logprobs"]) == (4, 2)
    assert got["structured_outputs"].kwargs == {"json": {"type": "object"}}
    # Every field of ours has its vLLM counterpart (constraint is the torch engine's grammar object).
    ours = set(SamplingParams.__dataclass_fields__) - {"constraint", "guided", "stop"}
    assert ours <= set(got)
    plain = sampling_params(SamplingParams(max_tokens=3)).kwargs
    assert plain["logit_bias"] is None and plain["logprobs"] is None and "structured_outputs" not in plain


@dataclass
class _Logprob:
    logprob: float
    rank: int | None


def test_vllm_logprobs_become_ours() -> None:
    from inference.engine.vllm_engine import _logprobs, _prompt_logprobs

    completion = types.SimpleNamespace(
        token_ids=[5, 6],
        logprobs=[
            {5: _Logprob(-0.1, 1), 8: _Logprob(-2.5, 2), 9: _Logprob(-3.0, 3)},
            {6: _Logprob(-4.0, 3), 1: _Logprob(-0.2, 1), 2: _Logprob(-1.0, 2)},
        ],
    )
    assert _logprobs(completion, 2) == [
        TokenLogprob(5, -0.1, ((5, -0.1), (8, -2.5))),
        TokenLogprob(6, -4.0, ((1, -0.2), (2, -1.0))),
    ]
    assert _logprobs(completion, None) is None
    request = EngineRequest("r", [3, 4], SamplingParams(max_tokens=1, prompt_logprobs=1))
    prompt = _prompt_logprobs([None, {4: _Logprob(float("-inf"), 2), 0: _Logprob(-0.01, 1)}], request)
    assert prompt == [None, TokenLogprob(4, -9999.0, ((0, -0.01),))]
