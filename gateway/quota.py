"""Rate limits and quotas, per key and per tenant, checked in one atomic step.

Two backends with the same semantics: Redis (one Lua script, one round trip to admit and one
to settle; shared by every gateway process) and an in-process one for the embedded default
with no Redis (one worker). Limits:

- requests and tokens per minute: buckets that drain continuously (a burst of N, then N per
  minute); tokens are reserved at admission (prompt estimate + max_tokens) and settled to
  the real count when the request ends;
- concurrent requests: leases that expire, so a crashed gateway does not hold slots forever;
- monthly token budget and spend cap: a hard stop. The month's counters take the larger of
  the live value and the ledger's (`usage_baseline_set`, fed by billing).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from django.conf import settings

from gateway.baselines import LedgerBaselines
from gateway.conf import conf
from gateway.quota_lua import SCRIPT
from tenants.types import EffectiveLimits, KeyContext

MONTH_TTL_S = 40 * 24 * 3600
PREFIX = "mmorch:q"


@dataclass(frozen=True, slots=True)
class QuotaSubject:
    """A key or a tenant with its limits, which quotas count against: `key:<id>` or `tenant:<id>`."""

    name: str
    limits: EffectiveLimits

    def limit_args(self) -> list[str]:
        lim = self.limits
        return [
            _opt(lim.requests_per_minute),
            _opt(lim.tokens_per_minute),
            _opt(lim.max_concurrent_requests),
            _opt(lim.monthly_token_budget),
            "-1" if lim.monthly_spend_cap is None else str(lim.monthly_spend_cap),
        ]


def _tenant_of(subjects: Sequence[QuotaSubject]) -> int | None:
    """The tenant id of a call's subjects (from its `tenant:<id>` subject)."""
    return next((int(s.name[7:]) for s in subjects if s.name.startswith("tenant:")), None)


def _opt(value: int | None) -> str:
    return "-1" if value is None else str(int(value))


def subjects_for(ctx: KeyContext) -> tuple[QuotaSubject, QuotaSubject]:
    """The key, then its tenant: a request is admitted only when both have room."""
    return (
        QuotaSubject(f"key:{ctx.key_id}", ctx.key_limits),
        QuotaSubject(f"tenant:{ctx.tenant_id}", ctx.tenant_limits),
    )


# The cached month as [start, end) in epoch seconds and its label. Cached by its bounds, not for a
# stretch of time: a request in the first second of a month must not count against the last one.
_period: tuple[float, float, str] = (0.0, 0.0, "")


def period_now() -> str:
    """The billing month, "YYYY-MM" in UTC."""
    global _period
    start, end, label = _period
    now = time.time()
    if not start <= now < end:
        moment = datetime.fromtimestamp(now, UTC)
        first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
        following = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
        label = first.strftime("%Y-%m")
        _period = (first.timestamp(), following.timestamp(), label)
    return label


@dataclass(slots=True)
class Decision:
    """The answer to an admission check, with what the x-ratelimit-* headers report."""

    admitted: bool
    code: str = ""  # "rate_limit_exceeded" or "insufficient_quota" when refused
    reason: str = ""  # requests, tokens, request_too_large, concurrency, monthly_tokens, monthly_spend
    retry_after_ms: int = 0
    limit_requests: int = -1  # -1: no such limit
    remaining_requests: int = -1
    reset_requests_ms: int = 0
    limit_tokens: int = -1
    remaining_tokens: int = -1
    reset_tokens_ms: int = 0
    lease: str = ""
    reserved: int = 0
    subjects: tuple[QuotaSubject, ...] = field(default_factory=tuple)

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Decision:
        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        return cls(
            admitted=int(reply[0]) == 1,
            code=text(reply[1]),
            reason=text(reply[2]),
            retry_after_ms=int(reply[3]),
            limit_requests=int(reply[4]),
            remaining_requests=int(reply[5]),
            reset_requests_ms=int(reply[6]),
            limit_tokens=int(reply[7]),
            remaining_tokens=int(reply[8]),
            reset_tokens_ms=int(reply[9]),
        )

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests >= 0:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = duration_text(self.reset_requests_ms)
        if self.limit_tokens >= 0:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = duration_text(self.reset_tokens_ms)
        if not self.admitted and self.code:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_ms / 1000)))
            out["retry-after-ms"] = str(max(0, self.retry_after_ms))
        return out


def duration_text(ms: int) -> str:
    """OpenAI's reset format: "120ms", "1.5s", "6m0s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3f}".rstrip("0").rstrip(".") + "s"


class QuotaBackend(Protocol):
    async def admit(self, subjects: Sequence[QuotaSubject], *, tokens: int) -> Decision: ...

    async def settle(self, decision: Decision, *, used_tokens: int, refund_request: bool = False) -> None: ...

    async def renew(self, decision: Decision) -> None: ...

    async def peek(self, subjects: Sequence[QuotaSubject]) -> Decision: ...

    def baseline_set(
        self, subject_name: str, period: str, tokens: int, spend: Decimal, *, tenant_id: int | None = None
    ) -> None: ...

    def reset(self) -> None: ...


def _keys(subjects: Sequence[QuotaSubject], period: str, tenant_id: int | None = None) -> list[str]:
    """The script's keys. All carry the tenant's hash tag `{t<id>}`, the key's counters too, so
    one call's keys share a Redis Cluster slot (the script touches them together)."""
    if tenant_id is None:
        tenant_id = _tenant_of(subjects)
    if tenant_id is None:
        raise ValueError("the quota keys need the tenant: pass tenant_id or the tenant's subject")
    keys: list[str] = []
    for subject in subjects:
        base = f"{PREFIX}:{{t{tenant_id}}}:{subject.name}"
        keys += [f"{base}:rpm", f"{base}:tpm", f"{base}:leases", f"{base}:mtok:{period}", f"{base}:mspend:{period}"]
    return keys


def _args(mode: str, subjects: Sequence[QuotaSubject], *extra: object) -> list[str]:
    args = [mode, str(len(subjects))]
    for subject in subjects:
        args += subject.limit_args()
    args += [str(v) for v in extra]
    return args


def lease_ttl_ms() -> int:
    return conf().lease_ttl_ms


class RedisQuota:
    """Redis backend: every operation is one EVALSHA of the script."""

    def __init__(self, url: str) -> None:
        from gateway.redis_pipe import script_pipe

        self._url = url
        # The request path: auto-pipelined EVALSHA (TLS, Sentinel and Cluster URLs too).
        self._pipe = script_pipe(url, SCRIPT)
        self._sync: Any = None  # billing's baseline feed and tests: plain redis-py

    def _sync_client(self) -> Any:
        if self._sync is None:
            from core.redis_url import redis_client

            self._sync = redis_client(self._url, timeout=2)
        return self._sync

    async def admit(self, subjects: Sequence[QuotaSubject], *, tokens: int) -> Decision:
        lease = uuid.uuid4().hex
        reply = await self._pipe.evalsha(
            _keys(subjects, period_now()), _args("admit", subjects, tokens, lease, lease_ttl_ms(), MONTH_TTL_S)
        )
        decision = Decision.from_reply(reply)
        if decision.admitted:
            decision.lease, decision.reserved, decision.subjects = lease, tokens, tuple(subjects)
        return decision

    async def settle(self, decision: Decision, *, used_tokens: int, refund_request: bool = False) -> None:
        await self._pipe.evalsha(
            _keys(decision.subjects, period_now()),
            _args(
                "settle", decision.subjects, used_tokens - decision.reserved, 1 if refund_request else 0, decision.lease
            ),
        )

    async def renew(self, decision: Decision) -> None:
        await self._pipe.evalsha(
            _keys(decision.subjects, period_now()), _args("renew", decision.subjects, decision.lease, lease_ttl_ms())
        )

    async def peek(self, subjects: Sequence[QuotaSubject]) -> Decision:
        reply = await self._pipe.evalsha(_keys(subjects, period_now()), _args("peek", subjects, 0, "", 0, MONTH_TTL_S))
        decision = Decision.from_reply(reply)
        decision.admitted = True
        decision.code = ""
        return decision

    def baseline_set(
        self, subject_name: str, period: str, tokens: int, spend: Decimal, *, tenant_id: int | None = None
    ) -> None:
        subject = QuotaSubject(subject_name, EffectiveLimits())
        client = self._sync_client()
        client.eval(
            SCRIPT,
            5,
            *_keys([subject], period, tenant_id),
            *_args("baseline", [subject], int(tokens), str(spend), MONTH_TTL_S),
        )

    def reset(self) -> None:
        client = self._sync_client()
        for key in client.scan_iter(match=f"{PREFIX}:*", count=500):
            client.delete(key)


@dataclass(slots=True)
class _Bucket:
    level: float = 0.0
    at: float = 0.0


class MemoryQuota:
    """In-process backend for a single worker without Redis; same semantics as the script."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._month: dict[str, Decimal] = {}
        # The spend feed runs in another process; this one reads the ledger itself.
        self._ledger = LedgerBaselines(self, interval_s=conf().ledger_baseline_s, period=period_now)

    @staticmethod
    def _now_ms() -> float:
        return time.time() * 1000

    def _level(self, key: str, limit: int, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        return max(0.0, bucket.level - (now - bucket.at) * limit / 60000)

    def _store(self, key: str, level: float, now: float) -> None:
        self._buckets[key] = _Bucket(max(0.0, level), now)

    def _admit(self, subjects: Sequence[QuotaSubject], tokens: int, mode: str, lease: str) -> Decision:
        now = self._now_ms()
        period = period_now()
        cost = tokens if mode == "admit" else 0
        reqcost = 1 if mode == "admit" else 0
        d = Decision(admitted=False)
        fail_code, fail_reason, retry = "", "", 0.0
        rr = rt = -1.0
        levels: list[tuple[float, float]] = []
        for subject in subjects:
            lim = subject.limits
            base = subject.name
            rl = tl = 0.0
            spent = self._month.get(f"{base}:mspend:{period}", Decimal(0))
            used = self._month.get(f"{base}:mtok:{period}", Decimal(0))
            if (
                fail_code != "insufficient_quota"
                and lim.monthly_spend_cap is not None
                and spent >= lim.monthly_spend_cap
            ):
                fail_code, fail_reason = "insufficient_quota", "monthly_spend"
            budget = lim.monthly_token_budget
            if fail_code != "insufficient_quota" and budget is not None and used + cost > budget:
                fail_code, fail_reason = "insufficient_quota", "monthly_tokens"
            rpm = lim.requests_per_minute
            if rpm is not None:
                rl = self._level(f"{base}:rpm", rpm, now)
                left = rpm - rl - reqcost
                if left < 0:
                    if not fail_code:
                        fail_code, fail_reason = "rate_limit_exceeded", "requests"
                    retry = max(retry, (-left) * 60000 / rpm if rpm > 0 else 60000)
                    left = rpm - rl
                if rr < 0 or left < rr:
                    d.limit_requests, rr = rpm, left
                    d.reset_requests_ms = math.ceil((rl + reqcost) * 60000 / max(rpm, 1))
            tpm = lim.tokens_per_minute
            if tpm is not None:
                tl = self._level(f"{base}:tpm", tpm, now)
                left = tpm - tl - cost
                if left < 0:
                    if cost > tpm:
                        if not fail_code:
                            fail_code, fail_reason = "rate_limit_exceeded", "request_too_large"
                    else:
                        if not fail_code:
                            fail_code, fail_reason = "rate_limit_exceeded", "tokens"
                        retry = max(retry, (-left) * 60000 / max(tpm, 1))
                    left = tpm - tl
                if rt < 0 or left < rt:
                    d.limit_tokens, rt = tpm, left
                    d.reset_tokens_ms = math.ceil((tl + cost) * 60000 / max(tpm, 1))
            conc = lim.max_concurrent_requests
            if conc is not None and mode == "admit":
                leases = self._leases.setdefault(base, {})
                for lease_id in [k for k, exp in leases.items() if exp <= now]:
                    del leases[lease_id]
                if len(leases) >= conc:
                    if not fail_code:
                        fail_code, fail_reason = "rate_limit_exceeded", "concurrency"
                    retry = max(retry, 1000)
            levels.append((rl, tl))
        if rr >= 0:
            d.remaining_requests = math.floor(max(rr, 0))
        if rt >= 0:
            d.remaining_tokens = math.floor(max(rt, 0))
        d.code, d.reason, d.retry_after_ms = fail_code, fail_reason, math.ceil(retry)
        if mode == "peek":
            d.admitted, d.code = True, ""
            return d
        if fail_code:
            return d
        d.admitted = True
        ttl = lease_ttl_ms()
        for subject, (rl, tl) in zip(subjects, levels, strict=True):
            lim, base = subject.limits, subject.name
            if lim.requests_per_minute is not None:
                self._store(f"{base}:rpm", rl + 1, now)
            if lim.tokens_per_minute is not None:
                self._store(f"{base}:tpm", tl + cost, now)
            if lim.max_concurrent_requests is not None:
                self._leases.setdefault(base, {})[lease] = now + ttl
            month_key = f"{base}:mtok:{period}"
            self._month[month_key] = self._month.get(month_key, Decimal(0)) + cost
        d.lease, d.reserved, d.subjects = lease, tokens, tuple(subjects)
        return d

    async def admit(self, subjects: Sequence[QuotaSubject], *, tokens: int) -> Decision:
        await self._ledger.ensure(_tenant_of(subjects))
        with self._lock:
            return self._admit(subjects, tokens, "admit", uuid.uuid4().hex)

    async def peek(self, subjects: Sequence[QuotaSubject]) -> Decision:
        with self._lock:
            return self._admit(subjects, 0, "peek", "")

    async def settle(self, decision: Decision, *, used_tokens: int, refund_request: bool = False) -> None:
        delta = used_tokens - decision.reserved
        now = self._now_ms()
        period = period_now()
        with self._lock:
            for subject in decision.subjects:
                lim, base = subject.limits, subject.name
                if lim.tokens_per_minute is not None and delta:
                    self._store(f"{base}:tpm", self._level(f"{base}:tpm", lim.tokens_per_minute, now) + delta, now)
                if lim.requests_per_minute is not None and refund_request:
                    self._store(f"{base}:rpm", self._level(f"{base}:rpm", lim.requests_per_minute, now) - 1, now)
                self._leases.get(base, {}).pop(decision.lease, None)
                month_key = f"{base}:mtok:{period}"
                if delta and month_key in self._month:
                    self._month[month_key] = max(Decimal(0), self._month[month_key] + delta)

    async def renew(self, decision: Decision) -> None:
        now = self._now_ms()
        with self._lock:
            for subject in decision.subjects:
                leases = self._leases.get(subject.name, {})
                if decision.lease in leases:
                    leases[decision.lease] = now + lease_ttl_ms()

    def baseline_set(
        self, subject_name: str, period: str, tokens: int, spend: Decimal, *, tenant_id: int | None = None
    ) -> None:
        with self._lock:
            for key, value in (
                (f"{subject_name}:mtok:{period}", Decimal(tokens)),
                (f"{subject_name}:mspend:{period}", spend),
            ):
                if self._month.get(key, Decimal(0)) < value:
                    self._month[key] = value

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._leases.clear()
            self._month.clear()


_backend: QuotaBackend | None = None
_backend_lock = threading.Lock()


def backend() -> QuotaBackend:
    """The process's backend: Redis when settings.REDIS_URL is set, else in-process."""
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = RedisQuota(settings.REDIS_URL) if settings.REDIS_URL else MemoryQuota()
    return _backend


def backend_set(new: QuotaBackend | None) -> None:
    """Swap the backend (tests run the same suite over both)."""
    global _backend
    _backend = new


def usage_baseline_set(*, tenant_id: int, key_id: int | None, period: str, tokens: int, spend: Decimal) -> None:
    """Billing's feed: month-to-date tokens and spend from the ledger for a key, or for the
    whole tenant when `key_id` is None. The live counters keep the larger value."""
    if len(period) != 7 or period[4] != "-":
        raise ValueError("period must look like YYYY-MM")
    subject_name = f"tenant:{tenant_id}" if key_id is None else f"key:{key_id}"
    backend().baseline_set(subject_name, period, int(tokens), Decimal(spend), tenant_id=tenant_id)
