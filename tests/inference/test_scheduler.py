"""The fair scheduler on a fake clock with a simulated engine (no model, no threads)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

import pytest

from inference.scheduler import AdmissionError, AsyncScheduler, FairScheduler, QueueBudget, Ticket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Job:
    ticket: Ticket
    output_tokens: int
    produced: int = 0


class SimEngine:
    """Each step costs 10 ms of fake time and gives every running request one token."""

    def __init__(self, scheduler: FairScheduler, clock: FakeClock) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.running: list[Job] = []
        self.pending: dict[int, Job] = {}
        self.tokens: dict[str, int] = defaultdict(int)
        self.first_token: dict[str, float] = {}

    def submit(self, tenant: str, *, weight: int = 1, prompt: int = 20, output: int = 30, **caps: int) -> Job:
        ticket = Ticket(request_id=f"{tenant}-{len(self.pending)}", tenant=tenant, prompt_tokens=prompt, weight=weight)
        for name, value in caps.items():
            setattr(ticket, name, value)
        self.scheduler.admit(ticket)
        job = Job(ticket, output)
        self.pending[id(ticket)] = job
        return job

    def step(self) -> None:
        while (ticket := self.scheduler.pop_next()) is not None:
            self.running.append(self.pending.pop(id(ticket)))
        self.clock.now += 0.01
        for job in list(self.running):
            job.produced += 1
            self.scheduler.charge(job.ticket, 1)
            self.tokens[job.ticket.tenant] += 1
            self.first_token.setdefault(job.ticket.request_id, self.clock.now)
            if job.produced >= job.output_tokens:
                self.running.remove(job)
                self.scheduler.finish(job.ticket)


def make(capacity: int = 8, **kwargs: object) -> tuple[FairScheduler, SimEngine, FakeClock]:
    clock = FakeClock()
    scheduler = FairScheduler(capacity=capacity, clock=clock, **kwargs)  # type: ignore[arg-type]
    return scheduler, SimEngine(scheduler, clock), clock


def test_shares_under_saturation_follow_weights_1_2_3() -> None:
    scheduler, engine, _ = make(capacity=8)
    weights = {"a": 1, "b": 2, "c": 3}
    for _ in range(2000):
        # Keep every tenant backlogged.
        for tenant, weight in weights.items():
            while scheduler.waiting_of(tenant) < 4:
                engine.submit(tenant, weight=weight, prompt=20, output=30)
        engine.step()
    served = {t: scheduler.tenants[t].served_tokens for t in weights}
    total = sum(served.values())
    for tenant, weight in weights.items():
        share = served[tenant] / total
        assert share == pytest.approx(weight / 6, rel=0.05), (tenant, share, served)


def test_fcfs_ignores_weights() -> None:
    scheduler, engine, _ = make(capacity=8, policy="fcfs")
    for _ in range(600):
        for tenant, weight in {"a": 1, "c": 3}.items():
            while scheduler.waiting_of(tenant) < 4:
                engine.submit(tenant, weight=weight)
        engine.step()
    a, c = scheduler.tenants["a"].served_tokens, scheduler.tenants["c"].served_tokens
    assert a / (a + c) == pytest.approx(0.5, rel=0.05)


def test_idle_tenant_is_lifted_to_the_smallest_backlogged_counter() -> None:
    scheduler, engine, _ = make(capacity=4)
    for _ in range(300):
        for tenant in ("a", "b"):
            while scheduler.waiting_of(tenant) < 4:
                engine.submit(tenant)
        engine.step()
    low = min(scheduler.tenants["a"].counter, scheduler.tenants["b"].counter)
    assert low >= 500
    engine.submit("idle")
    assert scheduler.tenants["idle"].counter == pytest.approx(low)
    # Lifted, it gets its fair turn but cannot claim the service it missed: over the next stretch
    # its share is about a third, not everything.
    before = {t: scheduler.tenants[t].served_tokens for t in ("a", "b", "idle")}
    for _ in range(300):
        for tenant in ("a", "b", "idle"):
            while scheduler.waiting_of(tenant) < 4:
                engine.submit(tenant)
        engine.step()
    gained = {t: scheduler.tenants[t].served_tokens - before[t] for t in before}
    assert gained["idle"] / sum(gained.values()) == pytest.approx(1 / 3, rel=0.1)


def test_without_lift_a_returning_tenant_would_starve_others() -> None:
    # The counter really is the lifted one: a new tenant without history starts at the floor,
    # not at zero, when others are backlogged.
    scheduler, engine, _ = make(capacity=2)
    for _ in range(50):
        while scheduler.waiting_of("a") < 2:
            engine.submit("a")
        engine.step()
    assert scheduler.tenants["a"].counter > 0
    engine.submit("new")
    assert scheduler.tenants["new"].counter == scheduler.tenants["a"].counter


def light_wait(policy: str) -> float:
    _, engine, clock = make(capacity=8, policy=policy)
    for _ in range(32):
        engine.submit("heavy", output=50)
    for _ in range(20):
        engine.step()
    job = engine.submit("light", output=5)
    start = clock.now
    for _ in range(200):
        engine.step()
        if job.ticket.request_id in engine.first_token:
            break
    return engine.first_token[job.ticket.request_id] - start


def test_light_tenant_gets_through_a_heavy_backlog_quickly() -> None:
    # Fair: it waits only for the first heavy request to finish (30 steps), not for the backlog of 24.
    assert light_wait("fair") < 0.35
    assert light_wait("fcfs") > 1.5


def test_max_inflight_caps_running_and_max_queued_refuses_with_429() -> None:
    scheduler, engine, _ = make(capacity=8)
    for _ in range(3):
        engine.submit("a", max_inflight=2, max_queued=3)
    engine.step()
    assert scheduler.running_of("a") == 2
    assert scheduler.waiting_of("a") == 1
    engine.submit("a", max_inflight=2, max_queued=3)
    engine.submit("a", max_inflight=2, max_queued=3)
    with pytest.raises(AdmissionError) as refused:
        engine.submit("a", max_inflight=2, max_queued=3)
    assert refused.value.status == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after >= 1
    assert scheduler.waiting_of("a") == 3  # the refused request left no trace
    engine.submit("b", max_queued=3)  # other tenants are unaffected


def test_global_queue_cap_refuses_with_503() -> None:
    budget = QueueBudget(cap=2)
    _, engine, _ = make(capacity=1, budget=budget)
    engine.submit("a")
    engine.submit("b")
    with pytest.raises(AdmissionError) as refused:
        engine.submit("c")
    assert refused.value.status == 503
    assert refused.value.code == "overloaded"
    engine.step()  # one leaves the queue for the engine: room again
    engine.submit("c")
    assert budget.waiting == 2


def test_priority_orders_requests_within_a_tenant() -> None:
    scheduler, _, _ = make(capacity=1)
    order = []
    for priority in (0, 5, 1):
        ticket = Ticket(request_id=f"p{priority}", tenant="a", prompt_tokens=1, priority=priority)
        scheduler.admit(ticket)
    while (ticket := scheduler.pop_next()) is not None:
        order.append(ticket.request_id)
        scheduler.finish(ticket)
    assert order == ["p5", "p1", "p0"]


def test_queue_timeout_expires_waiting_requests() -> None:
    scheduler, engine, clock = make(capacity=1, queue_timeout_s=5.0)
    engine.submit("a", output=1000)
    waiting = engine.submit("a")
    engine.step()
    clock.now = 4.0
    assert scheduler.expire() == []
    clock.now = 5.5
    assert scheduler.expire() == [waiting.ticket]
    assert scheduler.waiting_of("a") == 0
    assert waiting.ticket.state == "cancelled"


async def test_async_scheduler_hands_slots_over_and_cancels_waiters() -> None:
    core = FairScheduler(capacity=1, clock=lambda: 0.0)
    scheduler = AsyncScheduler(core)
    first = Ticket(request_id="1", tenant="a", prompt_tokens=1)
    await scheduler.acquire(first)
    second = Ticket(request_id="2", tenant="a", prompt_tokens=1)
    third = Ticket(request_id="3", tenant="b", prompt_tokens=1)
    waiter2 = asyncio.create_task(scheduler.acquire(second))
    waiter3 = asyncio.create_task(scheduler.acquire(third))
    await asyncio.sleep(0)
    assert core.waiting == 2
    waiter2.cancel()  # the client left while waiting
    await asyncio.gather(waiter2, return_exceptions=True)
    assert core.waiting == 1 and second.state == "cancelled"
    scheduler.release(first)
    await asyncio.wait_for(waiter3, 1.0)
    assert third.state == "running" and core.running == 1


async def test_async_scheduler_queue_timeout_is_503() -> None:
    core = FairScheduler(capacity=1, clock=lambda: 0.0, queue_timeout_s=0.05)
    scheduler = AsyncScheduler(core)
    await scheduler.acquire(Ticket(request_id="1", tenant="a", prompt_tokens=1))
    with pytest.raises(AdmissionError) as refused:
        await scheduler.acquire(Ticket(request_id="2", tenant="a", prompt_tokens=1))
    assert (refused.value.status, refused.value.code) == (503, "queue_timeout")
    assert core.waiting == 0


def test_reserved_slot_lets_a_newcomer_start_at_once() -> None:
    scheduler, engine, clock = make(capacity=4, reserve_slots=1, reserve_window_s=10.0)

    def run(steps: int) -> None:
        for _ in range(steps):
            while scheduler.waiting_of("heavy") < 4:
                engine.submit("heavy", output=100)
            engine.step()

    run(1)
    # Alone, the heavy tenant may use every slot.
    assert scheduler.running_of("heavy") == 4
    run(120)
    light = engine.submit("light", output=3)
    # The first light request waits for a slot (no preemption) ...
    for _ in range(200):
        run(1)
        if light.ticket.state == "done":
            break
    assert light.ticket.state == "done"
    # ... but from then on the heavy tenant keeps one slot free for others ...
    run(150)
    assert scheduler.running_of("heavy") == 3
    second = engine.submit("light", output=3)
    run(1)
    assert second.ticket.state in ("running", "done")  # ... so the next light request starts at once
    # After the window with no sign of other tenants, the heavy tenant gets every slot again.
    clock.now += 11.0
    run(250)
    assert scheduler.running_of("heavy") == 4


@pytest.mark.parametrize(("policy", "heavy_slots"), [("fcfs", 4), ("fair", 3)])
def test_only_the_fair_policy_reserves_a_slot(policy: str, heavy_slots: int) -> None:
    scheduler, engine, _ = make(capacity=4, reserve_slots=1, policy=policy)
    engine.submit("light", output=1)
    for _ in range(8):
        engine.submit("heavy", output=100)
    engine.step()
    engine.step()
    assert scheduler.running_of("light") == 0
    assert scheduler.running_of("heavy") == heavy_slots


def test_a_request_with_n_choices_takes_n_rows() -> None:
    clock = FakeClock()
    scheduler = FairScheduler(capacity=4, clock=clock)
    three = Ticket(request_id="n3", tenant="a", prompt_tokens=5, slots=3)
    one = Ticket(request_id="n1", tenant="b", prompt_tokens=5)
    two = Ticket(request_id="n2", tenant="c", prompt_tokens=5, slots=2)
    for ticket in (three, one, two):
        scheduler.admit(ticket)
    assert scheduler.pop_next() is three
    assert scheduler.pop_next() is one  # 3 + 1 rows fill the batch of 4
    assert scheduler.pop_next() is None and scheduler.running == 4
    scheduler.finish(one)
    assert scheduler.pop_next() is None  # one free row is not enough for two choices
    scheduler.finish(three)
    assert scheduler.pop_next() is two and scheduler.running == 2
