"""Continuous batching on CPU, with the tiny demo model and with a 135M-parameter Llama.

Output tokens/s at 1, 4 and 16 concurrent requests through the engine, against the same engine
one request at a time and against Hugging Face `generate` on a static batch of the same size.
The demo model (2 layers, 64 wide) shows the engine's Python overhead; the 135M model
(`inference.bench_model`, SmolLM-135M's shape, random weights, built locally on first use) shows
an engine whose steps are weight-bound, as in production.

Run: .venv/bin/python -m bench.inference.batching [--models demo llama-135m] [--max-tokens N]
     [--repeats 3] [--levels 1 4 16] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.inference.harness import bench_model, demo_model, machine, make_engine, write_section
from inference.engine.base import EngineRequest, SamplingParams
from inference.engine.torch_engine import TorchEngine

MAX_TOKENS = 128
LEVELS = (1, 4, 16)


@dataclass(frozen=True)
class ModelSpec:
    title: str
    section: str  # the RESULTS.md section this model's table replaces
    path: Callable[[], Path]
    max_tokens: int
    # One at a time is a rate: on the big model it is timed over the first few requests only.
    sequential_cap: int | None
    repeats: int


# The models a run measures unless --models says otherwise (bench.inference --quick: the demo only).
DEFAULT_MODELS: tuple[str, ...] = ("demo", "llama-135m")

MODELS = {
    "demo": ModelSpec("demo model", "batching", demo_model, MAX_TOKENS, None, 3),
    "llama-135m": ModelSpec("135M-parameter Llama, random weights", "batching-llama-135m", bench_model, 64, 4, 1),
}


def prompts(n: int) -> list[str]:
    # Different lengths, as real traffic has.
    return [f"Request {i}: " + "tell me a story " * (1 + i % 5) for i in range(n)]


async def one(engine: TorchEngine, rid: str, prompt: str, max_tokens: int) -> int:
    tokens = 0
    request = EngineRequest(rid, engine.encode(prompt), SamplingParams(max_tokens=max_tokens, temperature=0))
    async for out in engine.generate(request):
        tokens = out.completion_tokens
    return tokens


async def concurrent(engine: TorchEngine, n: int, max_tokens: int) -> float:
    start = time.perf_counter()
    counts = await asyncio.gather(*(one(engine, f"c{n}-{i}", p, max_tokens) for i, p in enumerate(prompts(n))))
    return sum(counts) / (time.perf_counter() - start)


async def sequential(engine: TorchEngine, n: int, max_tokens: int, cap: int | None = None) -> float:
    start = time.perf_counter()
    total = 0
    for i, p in enumerate(prompts(n)[:cap]):
        total += await one(engine, f"s{n}-{i}", p, max_tokens)
    return total / (time.perf_counter() - start)


def static_generate(model: object, tokenizer: object, n: int, max_tokens: int) -> float:
    batch = tokenizer(prompts(n), return_tensors="pt", padding=True)  # type: ignore[operator]
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(  # type: ignore[attr-defined]
            **batch,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        )
    elapsed = time.perf_counter() - start
    return n * (out.shape[1] - batch["input_ids"].shape[1]) / elapsed


async def run_model(
    spec: ModelSpec, *, max_tokens: int, repeats: int, levels: tuple[int, ...]
) -> dict[int, dict[str, float]]:
    path = spec.path()
    engine = await make_engine(max_batch_size=max(levels), model_path=path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    await concurrent(engine, min(4, max(levels)), max_tokens)  # warm up
    static_generate(model, tokenizer, min(4, max(levels)), max_tokens)
    results: dict[int, dict[str, float]] = {}
    for n in levels:
        best = {"continuous": 0.0, "one_at_a_time": 0.0, "static": 0.0}
        for _ in range(repeats):  # best of several: the machine is shared
            best["continuous"] = max(best["continuous"], await concurrent(engine, n, max_tokens))
            best["one_at_a_time"] = max(
                best["one_at_a_time"], await sequential(engine, n, max_tokens, spec.sequential_cap)
            )
            best["static"] = max(best["static"], static_generate(model, tokenizer, n, max_tokens))
        results[n] = best
        print(f"{spec.section} n={n}: {best}", file=sys.stderr)
    await engine.stop()
    return results


def _section(spec: ModelSpec, results: dict[int, dict[str, float]], *, max_tokens: int, repeats: int, argv: str) -> str:
    capped = f" (one at a time: timed over the first {spec.sequential_cap} requests)" if spec.sequential_cap else ""
    lines = [
        f"## Continuous batching ({spec.title}, CPU)",
        "",
        f"Command: `.venv/bin/python -m bench.inference.batching{argv}`",
        f"Machine: {machine()}. Each request: {max_tokens} output tokens, greedy; best of {repeats} run(s){capped}.",
        "",
        "| concurrent | continuous batching tok/s | one at a time tok/s | HF generate static batch tok/s "
        "| vs one at a time | vs static |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in results.items():
        lines.append(
            f"| {n} | {r['continuous']:.1f} | {r['one_at_a_time']:.1f} | {r['static']:.1f} | "
            f"{r['continuous'] / r['one_at_a_time']:.2f}x | {r['continuous'] / r['static']:.2f}x |"
        )
    top = max(results)
    rt = results[top]
    lines += [
        "",
        f"At {top} concurrent: {rt['continuous'] / rt['one_at_a_time']:.2f}x one at a time (target >= 4x), "
        f"{rt['continuous'] / rt['static']:.2f}x static batch (target >= 0.7x).",
    ]
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.batching")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS))
    parser.add_argument("--max-tokens", type=int, help="output tokens per request (default: 128 demo, 64 135M)")
    parser.add_argument(
        "--repeats", type=int, help="runs per level, the best reported (default: 3 demo, 1 135M: minutes each)"
    )
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv if argv is not None else [])
    shown = "" if argv is None else "".join(f" {a}" for a in argv)
    everything: dict[str, dict[int, dict[str, float]]] = {}
    for name in args.models:
        spec = MODELS[name]
        max_tokens = args.max_tokens or spec.max_tokens
        repeats = args.repeats or spec.repeats
        results = await run_model(spec, max_tokens=max_tokens, repeats=repeats, levels=tuple(args.levels))
        text = _section(spec, results, max_tokens=max_tokens, repeats=repeats, argv=shown)
        if not args.no_write:
            write_section(spec.section, text)
        print(text)
        everything[name] = results
    return everything


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
