"""The torch engine on the demo model: determinism, stops, cancellation, continuous batching."""

from __future__ import annotations

import asyncio
from typing import Any

from inference.engine.base import EngineOutput, EngineRequest, SamplingParams


async def run(engine: Any, rid: str, prompt: str, **params: Any) -> tuple[str, int, str | None]:
    text, tokens, reason = "", 0, None
    request = EngineRequest(rid, engine.encode(prompt), SamplingParams(**params))
    async for out in engine.generate(request):
        text += out.text
        tokens = out.completion_tokens
        reason = out.finish_reason
    return text, tokens, reason


async def test_greedy_is_deterministic_and_fills_max_tokens(engine: Any) -> None:
    first = await run(engine, "a", "Hello there", max_tokens=48, temperature=0)
    second = await run(engine, "b", "Hello there", max_tokens=48, temperature=0)
    assert first == second
    text, tokens, reason = first
    assert (tokens, reason) == (48, "length")
    assert len(text) == 48  # the demo model writes printable ASCII, one byte per token
    assert len(set(text)) > 8  # not one repeated character


async def test_seeded_sampling_repeats_and_seeds_differ(engine: Any) -> None:
    a = await run(engine, "a", "abc", max_tokens=32, temperature=0.9, seed=7)
    b = await run(engine, "b", "abc", max_tokens=32, temperature=0.9, seed=7)
    c = await run(engine, "c", "abc", max_tokens=32, temperature=0.9, seed=8)
    greedy = await run(engine, "d", "abc", max_tokens=32, temperature=0)
    assert a == b
    assert a[0] != c[0]
    assert a[0] != greedy[0]
    narrow = await run(engine, "e", "abc", max_tokens=32, temperature=1.0, top_p=1e-6, seed=3)
    assert narrow[0] == greedy[0]  # top_p that keeps one token is greedy


async def test_stop_sequence_cuts_text_and_ends_request(engine: Any) -> None:
    full, _, _ = await run(engine, "a", "Stop test", max_tokens=64, temperature=0)
    stop = full[20:23]
    assert stop not in full[:20]
    text, tokens, reason = await run(engine, "b", "Stop test", max_tokens=64, temperature=0, stop=(stop, "\x00never"))
    assert reason == "stop"
    assert text == full[: full.index(stop)]
    assert tokens == full.index(stop) + len(stop)


async def test_cancellation_frees_the_slot(engine: Any) -> None:
    request = EngineRequest("long", engine.encode("cancel me"), SamplingParams(max_tokens=250, temperature=0))
    stream = engine.generate(request)
    got: list[EngineOutput] = []
    async for out in stream:
        got.append(out)
        if len(got) == 3:
            break
    assert engine.running() == 1
    await stream.aclose()  # the consumer going away aborts the request
    for _ in range(200):
        if engine.running() == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.running() == 0
    # The engine is free and still serves correctly afterwards.
    assert (await run(engine, "after", "cancel me", max_tokens=5, temperature=0))[1:] == (5, "length")


async def test_joining_a_running_batch_gives_the_solo_output(engine: Any) -> None:
    prompts = [f"request number {i} " * (i + 1) for i in range(6)]
    solo = [await run(engine, f"solo{i}", p, max_tokens=40, temperature=0) for i, p in enumerate(prompts)]

    async def staggered(i: int) -> tuple[str, int, str | None]:
        # Different prompt lengths and start times: rows join mid-flight and leave at different steps.
        await asyncio.sleep(0.004 * i)
        return await run(engine, f"batch{i}", prompts[i], max_tokens=40 - 3 * i, temperature=0)

    steps_before = engine.steps
    batched = await asyncio.gather(*(staggered(i) for i in range(6)))
    for i, (text, tokens, reason) in enumerate(batched):
        assert text == solo[i][0][: 40 - 3 * i]
        assert (tokens, reason) == (40 - 3 * i, "length")
    # They really shared decode steps (one-at-a-time would need the sum of all lengths).
    assert engine.steps - steps_before < sum(40 - 3 * i for i in range(6))


async def test_chat_template_is_applied(engine: Any) -> None:
    ids = engine.encode_chat([{"role": "user", "content": "hi"}])
    text = engine._tokenizer.decode(ids)
    assert text == "<s><|user|>\nhi\n<|assistant|>\n"


async def test_vllm_adapter_imports_without_vllm(demo_model: object) -> None:
    import importlib.util

    import pytest

    from inference.config import EngineOptions
    from inference.engine.base import EngineError
    from inference.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(model_path=str(demo_model), options=EngineOptions(max_batch_size=4))
    assert engine.max_batch_size == 4 and not engine.healthy()
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(EngineError, match="vllm"):
            await engine.start()
