"""Per-tenant admission and weighted fair scheduling (virtual token counter, Sheng et al., OSDI 2024).

`FairScheduler` is pure bookkeeping with an injected clock, so it can be driven by a simulated
engine on a fake clock. `AsyncScheduler` wraps it for the server: it parks waiting requests on
futures and hands a request to the engine whenever the engine has a free slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["fair", "fcfs"]


@dataclass(eq=False, slots=True)
class Ticket:
    """A request as the scheduler sees it. Identity is the object (eq=False)."""

    request_id: str
    tenant: str
    prompt_tokens: int
    weight: int = 1
    priority: int = 0
    max_inflight: int = 0
    max_queued: int = 0
    slots: int = 1  # rows it takes in the engine's batch: one per choice (n)
    arrival: float = 0.0
    dispatched_at: float | None = None
    state: Literal["new", "waiting", "running", "done", "cancelled"] = "new"
    seq: int = 0


class AdmissionError(Exception):
    """Refused at the door: 429 (this tenant's cap) or 503 (the node is full, or waited too long)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(slots=True)
class _Tenant:
    name: str
    counter: float = 0.0
    weight: int = 1
    waiting: list[tuple[int, int, Ticket]] = field(default_factory=list)  # (-priority, seq, ticket)
    running: int = 0
    served_tokens: int = 0


class QueueBudget:
    """The node-wide count of waiting requests, shared by the schedulers of every model."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.waiting = 0


class FairScheduler:
    def __init__(
        self,
        *,
        capacity: int,
        clock: Callable[[], float],
        policy: Policy = "fair",
        queue_timeout_s: float = 0.0,
        budget: QueueBudget | None = None,
        input_cost: float = 1.0,
        output_cost: float = 1.0,
        reserve_slots: int = 0,
        reserve_window_s: float = 30.0,
    ) -> None:
        self.capacity = capacity
        self.clock = clock
        self.policy = policy
        self.queue_timeout_s = queue_timeout_s
        self.budget = budget or QueueBudget(0)
        self.input_cost = input_cost
        self.output_cost = output_cost
        # Fair policy only: while another tenant has been seen within the window, no single tenant
        # may fill the last `reserve_slots` slots, so a newcomer starts at once instead of waiting
        # for a long request to finish (there is no preemption).
        self.reserve_slots = reserve_slots if policy == "fair" and reserve_slots < capacity else 0
        self.reserve_window_s = reserve_window_s
        self._last_seen: dict[str, float] = {}
        self.tenants: dict[str, _Tenant] = {}
        self.running = 0
        self.waiting = 0
        self._seq = itertools.count()
        self._last_counter = 0.0  # counter of the tenant served last: the floor when nobody is waiting
        self._avg_duration = 1.0

    # -- queries ---------------------------------------------------------------------------------

    def tenant(self, name: str) -> _Tenant:
        state = self.tenants.get(name)
        if state is None:
            state = self.tenants[name] = _Tenant(name=name)
        return state

    def waiting_of(self, name: str) -> int:
        state = self.tenants.get(name)
        return len(state.waiting) if state else 0

    def running_of(self, name: str) -> int:
        state = self.tenants.get(name)
        return state.running if state else 0

    # -- admission -------------------------------------------------------------------------------

    def admit(self, ticket: Ticket) -> None:
        """Queue `ticket` or raise AdmissionError; nothing changes when it is refused."""
        state = self.tenant(ticket.tenant)
        if ticket.max_queued > 0 and len(state.waiting) >= ticket.max_queued:
            raise AdmissionError(
                429,
                "rate_limit_exceeded",
                f"too many queued requests for this tenant (limit {ticket.max_queued})",
                retry_after=self.retry_after(),
            )
        if self.budget.cap > 0 and self.budget.waiting >= self.budget.cap:
            raise AdmissionError(
                503, "overloaded", "the inference node's queue is full", retry_after=self.retry_after()
            )
        if not state.waiting and state.running == 0:
            # Idle-return lift: a tenant coming back may not claim service for the time it was away.
            # (One with requests still running is not idle: its counter is current.)
            backlogged = [t.counter for t in self.tenants.values() if t.waiting]
            floor = min(backlogged) if backlogged else self._last_counter
            state.counter = max(state.counter, floor)
        state.weight = max(1, ticket.weight)
        ticket.arrival = self.clock()
        self._last_seen[ticket.tenant] = ticket.arrival
        ticket.seq = next(self._seq)
        ticket.state = "waiting"
        heapq.heappush(state.waiting, (-ticket.priority, ticket.seq, ticket))
        self.waiting += 1
        self.budget.waiting += 1

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_duration))

    # -- dispatch --------------------------------------------------------------------------------

    def _eligible(self, state: _Tenant) -> bool:
        if not state.waiting:
            return False
        head = state.waiting[0][2]
        if head.max_inflight > 0 and state.running >= head.max_inflight:
            return False
        if self.reserve_slots and state.running >= self.capacity - self.reserve_slots:
            return not self._others_active(state.name)
        return True

    def _others_active(self, name: str) -> bool:
        horizon = self.clock() - self.reserve_window_s
        stale = [t for t, seen in self._last_seen.items() if seen < horizon]
        for tenant in stale:
            if not self.tenants[tenant].waiting and not self.tenants[tenant].running:
                del self._last_seen[tenant]
        return any(t != name for t in self._last_seen)

    def pop_next(self) -> Ticket | None:
        """The request to start next, if the engine has room; it is counted as running."""
        if self.running >= self.capacity:
            return None
        best: _Tenant | None = None
        for state in self.tenants.values():
            if not self._eligible(state):
                continue
            if best is None:
                best = state
            elif self.policy == "fcfs":
                if state.waiting[0][2].seq < best.waiting[0][2].seq:
                    best = state
            elif (state.counter, state.running, state.waiting[0][2].seq) < (
                best.counter,
                best.running,
                best.waiting[0][2].seq,
            ):
                # Ties (a tenant just lifted from idle) go to the one with less in the engine.
                best = state
        if best is None:
            return None
        if self.running + best.waiting[0][2].slots > self.capacity:
            return None  # its n sequences wait until that many rows are free
        _, _, ticket = heapq.heappop(best.waiting)
        self.waiting -= 1
        self.budget.waiting -= 1
        best.running += 1
        self.running += ticket.slots
        ticket.state = "running"
        ticket.dispatched_at = self.clock()
        best.counter += self.input_cost * ticket.prompt_tokens / best.weight
        best.served_tokens += ticket.prompt_tokens
        self._last_counter = best.counter
        return ticket

    def charge(self, ticket: Ticket, tokens: int) -> None:
        """Output tokens produced for a running request."""
        state = self.tenant(ticket.tenant)
        state.counter += self.output_cost * tokens / state.weight
        state.served_tokens += tokens

    def finish(self, ticket: Ticket) -> None:
        """A running request left the engine: its slot is free."""
        if ticket.state != "running":
            return
        ticket.state = "done"
        state = self.tenant(ticket.tenant)
        state.running -= 1
        self.running -= ticket.slots
        if ticket.dispatched_at is not None:
            duration = self.clock() - ticket.dispatched_at
            self._avg_duration = 0.9 * self._avg_duration + 0.1 * duration

    def cancel(self, ticket: Ticket) -> bool:
        """Take a waiting request out of the queue (client gone, or timed out)."""
        if ticket.state != "waiting":
            return False
        state = self.tenant(ticket.tenant)
        state.waiting = [entry for entry in state.waiting if entry[2] is not ticket]
        heapq.heapify(state.waiting)
        ticket.state = "cancelled"
        self.waiting -= 1
        self.budget.waiting -= 1
        return True

    def expire(self) -> list[Ticket]:
        """Cancel and return waiting requests older than the queue timeout."""
        if self.queue_timeout_s <= 0:
            return []
        deadline = self.clock() - self.queue_timeout_s
        expired = [
            entry[2] for state in self.tenants.values() for entry in state.waiting if entry[2].arrival <= deadline
        ]
        for ticket in expired:
            self.cancel(ticket)
        return expired


class AsyncScheduler:
    """The server's side: requests wait on futures until the fair scheduler hands them a slot."""

    def __init__(self, core: FairScheduler, *, on_change: Callable[[str], None] | None = None) -> None:
        self.core = core
        self._waiters: dict[int, tuple[Ticket, asyncio.Future[None]]] = {}
        self._on_change = on_change or (lambda _tenant: None)

    async def acquire(self, ticket: Ticket) -> None:
        """Wait for an engine slot; raises AdmissionError when refused or timed out."""
        self.core.admit(ticket)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[id(ticket)] = (ticket, future)
        self._on_change(ticket.tenant)
        self._pump()
        try:
            if future.done():
                return
            timeout = self.core.queue_timeout_s or None
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            if self.core.cancel(ticket):
                self._waiters.pop(id(ticket), None)
                self._on_change(ticket.tenant)
                raise AdmissionError(
                    503, "queue_timeout", "the request waited too long for capacity", self.core.retry_after()
                ) from None
            # Dispatched at the very moment the timer fired: keep the slot.
        except BaseException:
            # Client went away while waiting (or was cancelled just after dispatch): give it all back.
            self._waiters.pop(id(ticket), None)
            if not self.core.cancel(ticket):
                self.release(ticket)
            self._on_change(ticket.tenant)
            raise

    def charge(self, ticket: Ticket, tokens: int) -> None:
        self.core.charge(ticket, tokens)

    def release(self, ticket: Ticket) -> None:
        """The request left the engine; start whoever is next."""
        if ticket.state == "running":
            self.core.finish(ticket)
            self._on_change(ticket.tenant)
            self._pump()

    def _pump(self) -> None:
        while True:
            ticket = self.core.pop_next()
            if ticket is None:
                return
            _, future = self._waiters.pop(id(ticket), (ticket, None))
            self._on_change(ticket.tenant)
            if future is None or future.done():
                self.core.finish(ticket)
                continue
            future.set_result(None)
