"""Weighted shares: three tenants with weights 1:2:3 keep the engine saturated; the token service
each receives (prompt + completion tokens, as the virtual token counter charges them) should split 1:2:3.
Run: .venv/bin/python -m bench.inference.weighted_shares
"""

from __future__ import annotations

import asyncio
import sys
import time

from bench.inference.harness import Served, machine, make_engine, write_section

WEIGHTS = {"w1": 1, "w2": 2, "w3": 3}
IN_FLIGHT = 12  # per tenant, against an engine batch of 8: everyone is backlogged
TOKENS = 48
WARMUP_S = 3.0
MEASURE_S = 25.0


async def main() -> dict[str, float]:
    engine = await make_engine(max_batch_size=8)
    served = Served.build(engine, "fair")
    stop = asyncio.Event()

    async def tenant(name: str, weight: int) -> None:
        while not stop.is_set():
            await served.request(name, f"tenant {name} wants service", TOKENS, weight=weight)

    tasks = [asyncio.create_task(tenant(n, w)) for n, w in WEIGHTS.items() for _ in range(IN_FLIGHT)]
    await asyncio.sleep(WARMUP_S)
    core = served.scheduler.core
    before = {n: core.tenants[n].served_tokens for n in WEIGHTS}
    start = time.monotonic()
    await asyncio.sleep(MEASURE_S)
    after = {n: core.tenants[n].served_tokens for n in WEIGHTS}
    elapsed = time.monotonic() - start
    stop.set()
    await asyncio.gather(*tasks)
    await engine.stop()
    gained = {n: after[n] - before[n] for n in WEIGHTS}
    total = sum(gained.values())
    shares = {n: gained[n] / total for n in WEIGHTS}
    print(shares, file=sys.stderr)
    weight_sum = sum(WEIGHTS.values())
    lines = [
        "## Weighted shares 1:2:3 under saturation (demo model, CPU, engine max batch 8)",
        "",
        "Command: `.venv/bin/python -m bench.inference.weighted_shares`",
        f"Machine: {machine()}. Each tenant keeps {IN_FLIGHT} requests of {TOKENS} output tokens in flight; "
        f"measured over {elapsed:.0f} s after a {WARMUP_S:.0f} s warm-up; {total} tokens served in the window.",
        "",
        "| tenant | weight | tokens | share | target | relative error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for n, w in WEIGHTS.items():
        target = w / weight_sum
        error = abs(shares[n] - target) / target
        worst = max(worst, error)
        lines.append(f"| {n} | {w} | {gained[n]} | {shares[n]:.3f} | {target:.3f} | {error * 100:.1f}% |")
    lines += ["", f"Largest relative error: {worst * 100:.1f}% (target: within 5%)."]
    write_section("weighted_shares", "\n".join(lines))
    print("\n".join(lines))
    return shares


if __name__ == "__main__":
    asyncio.run(main())
