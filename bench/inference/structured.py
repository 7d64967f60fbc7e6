"""Constrained decoding cost: json_schema output vs free text, through the torch engine (demo model, CPU).

Output tokens/s at 1 and 16 concurrent requests, each running to max_tokens (the schema asks for
more rows than fit, so constrained and free requests produce the same number of tokens), plus the
grammar's own cost per token (mask + advance) measured alone.
Run: .venv/bin/python -m bench.inference.structured [--max-tokens N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from bench.inference.harness import machine, make_engine, write_section
from inference.engine.base import EngineRequest, SamplingParams
from inference.engine.torch_engine import TorchEngine
from inference.structured import Structure, structure_for

LEVELS = (1, 16)
ROW = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "count": {"type": "integer", "minimum": 0, "maximum": 9999},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "count", "ok"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"rows": {"type": "array", "items": ROW, "minItems": 24}},
    "required": ["rows"],
    "additionalProperties": False,
}


def prompts(n: int) -> list[str]:
    return [f"Request {i}: list the inventory as JSON " + "please " * (1 + i % 5) for i in range(n)]


def compile_structure(engine: TorchEngine) -> Structure:
    structure = structure_for(
        response_format={"type": "json_schema", "json_schema": {"name": "inventory", "schema": SCHEMA, "strict": True}},
        tools=None,
        tool_choice=None,
        parallel_tool_calls=None,
        tokenizer=engine.tokenizer,
        vocab_size=engine.vocab_size,
    )
    assert structure is not None
    return structure


async def one(engine: TorchEngine, rid: str, prompt: str, max_tokens: int, structure: Structure | None) -> int:
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0, constraint=None if structure is None else structure.new_constraint
    )
    tokens = 0
    async for out in engine.generate(EngineRequest(rid, engine.encode(prompt), params)):
        tokens = max(tokens, out.completion_tokens)
    return tokens


async def concurrent(engine: TorchEngine, n: int, max_tokens: int, structure: Structure | None) -> float:
    tag = "j" if structure is not None else "t"
    start = time.perf_counter()
    run = time.monotonic_ns()
    counts = await asyncio.gather(
        *(one(engine, f"{tag}{n}-{i}-{run}", p, max_tokens, structure) for i, p in enumerate(prompts(n)))
    )
    elapsed = time.perf_counter() - start
    if structure is not None:
        assert all(c == max_tokens for c in counts), counts  # every request ran to max_tokens
    return sum(counts) / elapsed


def grammar_cost_us(structure: Structure, engine: TorchEngine, tokens: int) -> float:
    """Mean microseconds per token for allowed_mask + advance alone (greedy on a fixed preference)."""
    import torch

    preference = torch.arange(structure.vocab_size, dtype=torch.float32).flip(0)  # prefer low ids
    constraint = structure.new_constraint()
    start = time.perf_counter()
    done = 0
    for _ in range(tokens):
        mask = constraint.allowed_mask()
        token = int(torch.argmax(preference.masked_fill(~mask, float("-inf"))))
        constraint.advance(token)
        done += 1
        if constraint.is_finished():
            break
    return (time.perf_counter() - start) / done * 1e6


async def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(prog="bench.inference.structured")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="pairs of runs (free, constrained) per level")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    engine = await make_engine(max_batch_size=16)
    structure = compile_structure(engine)
    await concurrent(engine, 4, 16, None)  # warm up
    await concurrent(engine, 4, 16, structure)
    results: dict[int, dict[str, float]] = {}
    for n in LEVELS:
        free: list[float] = []
        constrained: list[float] = []
        for r in range(args.rounds):
            # Pairs in alternating order, and the median of the pairs' ratios: the machine is shared,
            # and a burst of someone else's load should hit both sides of a pair alike.
            if r % 2:
                constrained.append(await concurrent(engine, n, args.max_tokens, structure))
                free.append(await concurrent(engine, n, args.max_tokens, None))
            else:
                free.append(await concurrent(engine, n, args.max_tokens, None))
                constrained.append(await concurrent(engine, n, args.max_tokens, structure))
        ratio = statistics.median(c / f for c, f in zip(constrained, free, strict=True))
        results[n] = {"free": max(free), "json_schema": max(constrained), "ratio": ratio}
        print(f"n={n}: {results[n]}", file=sys.stderr)
    per_token = grammar_cost_us(structure, engine, 2000)
    await engine.stop()
    lines = [
        "## Structured outputs: json_schema constrained decoding vs free text (demo model, CPU)",
        "",
        f"Command: `.venv/bin/python -m bench.inference.structured --max-tokens {args.max_tokens} "
        f"--rounds {args.rounds}`",
        f"Machine: {machine()}. Each request: {args.max_tokens} output tokens, greedy; {args.rounds} pairs of runs. "
        "Grammar: llguidance, a strict schema of at least 24 objects (so every request runs to max_tokens).",
        "",
        "| concurrent | free tok/s (best) | json_schema tok/s (best) | ratio (median of pairs) |",
        "|---:|---:|---:|---:|",
    ]
    for n, r in results.items():
        lines.append(f"| {n} | {r['free']:.0f} | {r['json_schema']:.0f} | {r['ratio']:.2f}x |")
    worst = min(r["ratio"] for r in results.values())
    lines += [
        "",
        f"Grammar cost alone (mask + advance): {per_token:.0f} µs per token.",
        f"Target: >= 0.8x free at 1 and 16 concurrent (worst got {worst:.2f}x).",
    ]
    write_section("structured", "\n".join(lines))
    print("\n".join(lines))
    return results


def _run(argv: list[str] | None = None) -> Any:
    return asyncio.run(main(argv))


if __name__ == "__main__":
    _run()
