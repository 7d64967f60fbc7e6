"""Noisy neighbour: tenant A keeps 32 requests in flight on an engine with max batch 8, tenant B
sends one request at a time. B's time to first token and end-to-end latency alone, next to A under
FCFS, and next to A under the fair scheduler, in one run.
Run: .venv/bin/python -m bench.inference.noisy_neighbour
"""

from __future__ import annotations

import asyncio
import sys

from bench.inference.harness import Served, machine, make_engine, pct, write_section
from inference.engine.torch_engine import TorchEngine

A_INFLIGHT = 32
A_TOKENS = 64
B_TOKENS = 32
B_REQUESTS = 40


async def scenario(engine: TorchEngine, policy: str, *, with_a: bool) -> dict[str, float]:
    served = Served.build(engine, policy)
    stop = asyncio.Event()

    async def heavy() -> None:
        while not stop.is_set():
            await served.request("A", "A is busy " * 4, A_TOKENS)

    heavies = [asyncio.create_task(heavy()) for _ in range(A_INFLIGHT)] if with_a else []
    if heavies:
        await asyncio.sleep(1.0)  # let A fill the engine and its queue
    timings = []
    for i in range(B_REQUESTS):
        timings.append(await served.request("B", f"B asks question {i}", B_TOKENS))
        await asyncio.sleep(0.01)  # think time: B goes idle between requests
    stop.set()
    await asyncio.gather(*heavies)
    ttft = [t.ttft * 1000 for t in timings]
    e2e = [t.e2e * 1000 for t in timings]
    return {"ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "e2e_p50": pct(e2e, 50), "e2e_p95": pct(e2e, 95)}


async def main() -> dict[str, dict[str, float]]:
    engine = await make_engine(max_batch_size=8)
    await scenario(engine, "fair", with_a=False)  # warm up
    results = {
        "B alone": await scenario(engine, "fair", with_a=False),
        "B with A, FCFS": await scenario(engine, "fcfs", with_a=True),
        "B with A, fair scheduler": await scenario(engine, "fair", with_a=True),
    }
    await engine.stop()
    for name, r in results.items():
        print(name, r, file=sys.stderr)
    solo, fcfs, fair = results["B alone"], results["B with A, FCFS"], results["B with A, fair scheduler"]
    lines = [
        "## Noisy neighbour (demo model, CPU, engine max batch 8)",
        "",
        "Command: `.venv/bin/python -m bench.inference.noisy_neighbour`",
        f"Machine: {machine()}. Tenant A keeps {A_INFLIGHT} requests of {A_TOKENS} tokens in flight; tenant B sends "
        f"{B_REQUESTS} requests of {B_TOKENS} tokens one at a time. Latencies in ms.",
        "",
        "| scenario | B TTFT p50 | B TTFT p95 | B e2e p50 | B e2e p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['ttft_p50']:.1f} | {r['ttft_p95']:.1f} | {r['e2e_p50']:.1f} | {r['e2e_p95']:.1f} |"
        )
    lines += [
        "",
        f"Fair scheduler: B's p95 TTFT is {fair['ttft_p95'] / solo['ttft_p95']:.2f}x its solo value (target <= 3x) "
        f"and {fcfs['ttft_p95'] / fair['ttft_p95']:.1f}x better than under FCFS (target >= 5x).",
    ]
    write_section("noisy_neighbour", "\n".join(lines))
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    asyncio.run(main())
