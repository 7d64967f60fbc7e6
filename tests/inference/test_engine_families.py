"""The torch engine on tiny random models of other families (built here, nothing downloaded)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from inference.engine.base import EngineRequest, SamplingParams
from inference.engine.torch_engine import TorchEngine


def build(kind: str, demo_model: Path, target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": 259,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "pad_token_id": 258,
    }
    config = Qwen2Config(**common) if kind == "qwen2" else MistralConfig(**common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0)  # peaky logits, so greedy choices are clear
        model.lm_head.weight[257] = 0.0  # never stop early
    model.save_pretrained(str(target))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(demo_model / name, target / name)
    return target


async def generate(engine: TorchEngine, rid: str, prompt: str, max_tokens: int) -> list[int]:
    ids: list[int] = []
    request = EngineRequest(rid, engine.encode(prompt), SamplingParams(max_tokens=max_tokens, temperature=0))
    async for out in engine.generate(request):
        ids.extend(out.token_ids)
    return ids


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
async def test_family_batches_like_solo(kind: str, demo_model: Path, tmp_path: Path) -> None:
    path = build(kind, demo_model, tmp_path / kind)
    engine = TorchEngine(model_path=path, max_batch_size=4, max_tokens=64, threads=1)
    await engine.start()
    try:
        prompts = ["a", "a longer prompt here", "mid size one"]
        solo = [await generate(engine, f"s{i}", p, 20) for i, p in enumerate(prompts)]
        assert all(len(ids) == 20 for ids in solo)
        batched = await asyncio.gather(*(generate(engine, f"b{i}", p, 20) for i, p in enumerate(prompts)))
        assert batched == solo
        assert engine.encode_chat([{"role": "user", "content": "hi"}])[0] == 256  # the template's <s>
    finally:
        await engine.stop()
