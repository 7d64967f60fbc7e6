"""Shared pieces: the demo model, an in-process engine + scheduler, percentiles, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference.bench_model import build_bench_model
from inference.demo_model import build_demo_model
from inference.engine.base import EngineRequest, SamplingParams
from inference.engine.torch_engine import TorchEngine
from inference.scheduler import AsyncScheduler, FairScheduler, Ticket

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MODEL_DIR = ROOT / "var" / "test-cache" / "demo-llama"
BENCH_MODEL_DIR = ROOT / "var" / "test-cache" / "bench-llama-135m"


def demo_model() -> Path:
    return build_demo_model(MODEL_DIR)


def bench_model() -> Path:
    """The 135M-parameter random Llama (SmolLM-135M's shape); built on first use (about a minute)."""
    return build_bench_model(BENCH_MODEL_DIR)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores (1-minute load {load:.1f} when it finished), "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )


async def make_engine(max_batch_size: int, model_path: Path | None = None) -> TorchEngine:
    engine = TorchEngine(model_path=model_path or demo_model(), max_batch_size=max_batch_size, max_tokens=1024)
    await engine.start()
    return engine


@dataclass
class Timing:
    tenant: str
    submitted: float
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.submitted

    @property
    def e2e(self) -> float:
        assert self.finished is not None
        return self.finished - self.submitted


@dataclass
class Served:
    """The serving path without HTTP: scheduler slot, engine stream, token charges."""

    engine: TorchEngine
    scheduler: AsyncScheduler
    timings: list[Timing] = field(default_factory=list)
    counter: int = 0

    @classmethod
    def build(cls, engine: TorchEngine, policy: str) -> Served:
        # The node's defaults: one reserved slot under the fair policy (see docs/inference.md).
        core = FairScheduler(
            capacity=engine.max_batch_size,
            clock=time.monotonic,
            policy=policy,  # type: ignore[arg-type]
            reserve_slots=1,
        )
        return cls(engine=engine, scheduler=AsyncScheduler(core))

    async def request(self, tenant: str, prompt: str, max_tokens: int, *, weight: int = 1) -> Timing:
        self.counter += 1
        ids = self.engine.encode(prompt)
        timing = Timing(tenant=tenant, submitted=time.monotonic())
        ticket = Ticket(request_id=f"{tenant}-{self.counter}", tenant=tenant, prompt_tokens=len(ids), weight=weight)
        await self.scheduler.acquire(ticket)
        try:
            request = EngineRequest(ticket.request_id, ids, SamplingParams(max_tokens=max_tokens, temperature=0))
            async for out in self.engine.generate(request):
                if out.token_ids:
                    if timing.first_token is None:
                        timing.first_token = time.monotonic()
                    self.scheduler.charge(ticket, len(out.token_ids))
                    timing.tokens += len(out.token_ids)
        finally:
            self.scheduler.release(ticket)
        timing.finished = time.monotonic()
        self.timings.append(timing)
        return timing


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def write_section(name: str, body: str) -> None:
    """Replace (or add) this benchmark's section in RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Inference plane benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
