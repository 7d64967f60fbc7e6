"""Pulling every node's usage journal into the ledger.

Per node: fetch a page after the stored cursor (outside any transaction), then in one
transaction lock the cursor row, insert the page (duplicates ignored on `request_id`), add the
inserted rows to the rollups and move the cursor. A crash between fetch and commit leaves the
cursor where it was; the next run fetches the same page and the unique request id drops repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing.models import IngestCursor, Outcome
from billing.money import token_cost
from billing.pricing import PriceBook
from billing.services.rollups import LedgerRow, rollups_apply
from inference.client import usage_pull
from tenants.models import Tenant

logger = logging.getLogger(__name__)

_OUTCOMES = frozenset(o.value for o in Outcome)
_INT32_MAX = 2**31 - 1


class NodeLike(Protocol):
    name: str
    base_url: str


@dataclass(slots=True)
class IngestResult:
    nodes: int = 0
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    rejected: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    tenant_ids: set[int] = field(default_factory=set)

    def merge(self, other: IngestResult) -> None:
        self.nodes += other.nodes
        self.pages += other.pages
        self.fetched += other.fetched
        self.inserted += other.inserted
        self.rejected += other.rejected
        self.errors.update(other.errors)
        self.tenant_ids |= other.tenant_ids


@dataclass(slots=True)
class _Row:
    request_id: str
    tenant_id: int
    key_id: int | None
    model_name: str
    model_version: str
    journal_seq: int
    prompt_tokens: int
    completion_tokens: int
    outcome: str
    queue_ms: int
    ttft_ms: int | None
    duration_ms: int
    started_at: datetime
    finished_at: datetime


def _as_int(value: Any, *, minimum: int = 0, maximum: int = _INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"bad integer {value!r}")
    return value


def _as_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"bad time {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _parse_record(record: Mapping[str, Any]) -> _Row:
    request_id = record.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise ValueError("bad request_id")
    tenant_raw = str(record.get("tenant", ""))
    if not tenant_raw.isdigit():
        raise ValueError("bad tenant")
    key_raw = str(record.get("key") or "")
    model = record.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 200:
        raise ValueError("bad model")
    version = record.get("model_version") or ""
    outcome = record.get("outcome")
    if outcome not in _OUTCOMES:
        raise ValueError(f"bad outcome {outcome!r}")
    ttft = record.get("ttft_ms")
    started = _as_time(record.get("started_at"))
    finished = _as_time(record.get("finished_at") or record.get("started_at"))
    return _Row(
        request_id=request_id,
        tenant_id=int(tenant_raw),
        key_id=int(key_raw) if key_raw.isdigit() else None,
        model_name=model,
        model_version=str(version)[:200],
        journal_seq=_as_int(record.get("seq"), maximum=2**63 - 1),
        prompt_tokens=_as_int(record.get("prompt_tokens")),
        completion_tokens=_as_int(record.get("completion_tokens")),
        outcome=str(outcome),
        queue_ms=_as_int(int(record.get("queue_ms") or 0)),
        ttft_ms=None if ttft is None else _as_int(int(ttft)),
        duration_ms=_as_int(int(record.get("duration_ms") or 0)),
        started_at=started,
        finished_at=finished,
    )


def usage_cost(prompt_tokens: int, completion_tokens: int, input_per_1m: Decimal, output_per_1m: Decimal) -> Decimal:
    """Exact cost of one request (no rounding: invoices round per line)."""
    return token_cost(prompt_tokens, input_per_1m) + token_cost(completion_tokens, output_per_1m)


_INSERT_COLUMNS = (
    "request_id",
    "tenant_id",
    "key_id",
    "model_name",
    "model_version",
    "node_name",
    "journal_seq",
    "prompt_tokens",
    "completion_tokens",
    "outcome",
    "queue_ms",
    "ttft_ms",
    "duration_ms",
    "started_at",
    "finished_at",
    "price_id",
    "input_price_per_1m",
    "output_price_per_1m",
    "currency",
    "cost",
    "ingested_at",
)
_PG_TYPES = (
    "varchar(128)",
    "bigint",
    "bigint",
    "varchar(200)",
    "varchar(200)",
    "varchar(200)",
    "bigint",
    "integer",
    "integer",
    "varchar(16)",
    "integer",
    "integer",
    "integer",
    "timestamptz",
    "timestamptz",
    "bigint",
    "numeric(18, 6)",
    "numeric(18, 6)",
    "varchar(3)",
    "numeric(28, 12)",
    "timestamptz",
)
_COLUMN_LIST = ", ".join(_INSERT_COLUMNS)
_STAGE = "billing_ingest_stage"
# Session-local staging table: COPY is the fastest way in, the insert below the one way out.
_PG_STAGE_CREATE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
    + ", ".join(f"{name} {kind}" for name, kind in zip(_INSERT_COLUMNS, _PG_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
)
# One statement: insert new rows (repeats dropped on request_id) and add exactly those rows to the
# hourly and daily rollups; both sorted so concurrent ingesters take row locks in the same order.
_PG_INSERT_AND_ROLL_UP = f"""
WITH inserted AS (
    INSERT INTO billing_usagerecord ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM {_STAGE} ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING tenant_id, key_id, model_name, started_at, prompt_tokens, completion_tokens, cost
),
rolled AS (
    INSERT INTO billing_usagerollup
        (bucket, bucket_start, tenant_id, key_id, model_name, requests, input_tokens, output_tokens, cost)
    SELECT b.bucket, date_trunc(b.bucket, i.started_at, 'UTC'), i.tenant_id, coalesce(i.key_id, 0), i.model_name,
           count(*), sum(i.prompt_tokens), sum(i.completion_tokens), sum(i.cost)
    FROM inserted i CROSS JOIN (VALUES ('hour'), ('day')) AS b(bucket)
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, bucket_start, tenant_id, key_id, model_name) DO UPDATE SET
        requests = billing_usagerollup.requests + EXCLUDED.requests,
        input_tokens = billing_usagerollup.input_tokens + EXCLUDED.input_tokens,
        output_tokens = billing_usagerollup.output_tokens + EXCLUDED.output_tokens,
        cost = billing_usagerollup.cost + EXCLUDED.cost
)
SELECT tenant_id, count(*) FROM inserted GROUP BY tenant_id
"""  # noqa: S608 - constant SQL
_GENERIC_INSERT = (
    f"INSERT INTO billing_usagerecord ({_COLUMN_LIST}) VALUES ("  # noqa: S608 - constant SQL
    + ", ".join("%s" for _ in _INSERT_COLUMNS)
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


@dataclass(slots=True)
class InsertResult:
    inserted: int = 0
    rejected: int = 0
    tenant_ids: set[int] = field(default_factory=set)


def _insert_postgresql(values: list[tuple[Any, ...]]) -> dict[int, int]:
    # The staging table empties on commit, so COPY and insert must share one transaction.
    with transaction.atomic(), connection.cursor() as cursor:
        # Safe to skip the WAL flush wait: the cursor moves in this same transaction, so a commit
        # lost in a database crash is simply fetched again from the node's journal.
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(_PG_STAGE_CREATE)
        with cursor.copy(f"COPY {_STAGE} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)
        cursor.execute(_PG_INSERT_AND_ROLL_UP)
        counts = {int(tenant_id): int(n) for tenant_id, n in cursor.fetchall()}
        # Empty for the next batch of this transaction (a commit empties it as well).
        cursor.execute(f"DELETE FROM {_STAGE}")  # noqa: S608 - constant SQL
    return counts


def _insert_generic(values: list[tuple[Any, ...]], ledger_rows: dict[str, LedgerRow]) -> dict[int, int]:
    """Row by row (the embedded SQLite database of the demo), rollups computed in Python."""
    ops = connection.ops
    inserted: list[LedgerRow] = []
    with connection.cursor() as cursor:
        for value in values:
            adapted = list(value)
            for index in (13, 14, 20):
                adapted[index] = ops.adapt_datetimefield_value(adapted[index])
            for index in (16, 17, 19):
                adapted[index] = ops.adapt_decimalfield_value(adapted[index])
            cursor.execute(_GENERIC_INSERT, adapted)
            hit = cursor.fetchone()
            if hit:
                inserted.append(ledger_rows[hit[0]])
    rollups_apply(inserted)
    counts: dict[int, int] = {}
    for row in inserted:
        counts[row.tenant_id] = counts.get(row.tenant_id, 0) + 1
    return counts


def usage_records_insert(records: Sequence[Mapping[str, Any]], *, node_name: str) -> InsertResult:
    """Prices journal records, inserts the new ones into the ledger and adds them to the rollups.

    Runs inside the caller's transaction. Records that cannot be billed (malformed, unknown
    tenant) are logged and skipped so one bad record never blocks a node's journal.
    """
    result = InsertResult()
    parsed: dict[str, _Row] = {}
    for record in records:
        try:
            row = _parse_record(record)
        except (ValueError, TypeError) as exc:
            result.rejected += 1
            logger.error("usage record rejected from node %s: %s (%r)", node_name, exc, record.get("request_id"))
            continue
        parsed.setdefault(row.request_id, row)
    if not parsed:
        return result
    tenant_ids = {row.tenant_id for row in parsed.values()}
    known = set(Tenant.objects.filter(id__in=tenant_ids).values_list("id", flat=True))
    if known != tenant_ids:
        for request_id in [rid for rid, row in parsed.items() if row.tenant_id not in known]:
            result.rejected += 1
            logger.error("usage record %s from node %s names an unknown tenant", request_id, node_name)
            del parsed[request_id]
    book = PriceBook(known)
    now = timezone.now()
    values: list[tuple[Any, ...]] = []
    ledger_rows: dict[str, LedgerRow] = {}
    is_postgresql = connection.vendor == "postgresql"
    for row in parsed.values():
        price = book.lookup(row.tenant_id, row.model_name, row.started_at)
        cost = usage_cost(row.prompt_tokens, row.completion_tokens, price.input_per_1m, price.output_per_1m)
        values.append(
            (
                row.request_id,
                row.tenant_id,
                row.key_id,
                row.model_name,
                row.model_version,
                node_name,
                row.journal_seq,
                row.prompt_tokens,
                row.completion_tokens,
                row.outcome,
                row.queue_ms,
                row.ttft_ms,
                row.duration_ms,
                row.started_at,
                row.finished_at,
                price.price_id,
                price.input_per_1m,
                price.output_per_1m,
                price.currency,
                cost,
                now,
            )
        )
        if not is_postgresql:
            ledger_rows[row.request_id] = LedgerRow(
                row.tenant_id,
                row.key_id,
                row.model_name,
                row.started_at,
                row.prompt_tokens,
                row.completion_tokens,
                cost,
            )
    counts = _insert_postgresql(values) if is_postgresql else _insert_generic(values, ledger_rows)
    result.inserted = sum(counts.values())
    result.tenant_ids = set(counts)
    return result


def _node_secret() -> str:
    return str(settings.INFERENCE_SHARED_SECRET).split(",")[0].strip()


def usage_ingest_node(node: NodeLike, *, page_size: int | None = None, max_pages: int | None = None) -> IngestResult:
    """Ingests one node's journal from its cursor to the end (or `max_pages` pages)."""
    name = node.name
    page_size = page_size or settings.BILLING_INGEST_PAGE_SIZE
    result = IngestResult(nodes=1)
    cursor_row, _ = IngestCursor.objects.get_or_create(node_name=name)
    after = cursor_row.after_seq
    while max_pages is None or result.pages < max_pages:
        page = usage_pull(node.base_url, _node_secret(), after=after, limit=page_size)
        records: list[dict[str, Any]] = page.get("records") or []
        next_after = int(page.get("next_after", after))
        with transaction.atomic():
            locked = IngestCursor.objects.select_for_update().get(node_name=name)
            if locked.after_seq != after:
                # Another ingester moved this node on while we fetched: continue from there.
                after = locked.after_seq
                continue
            batch = usage_records_insert(records, node_name=name)
            IngestCursor.objects.filter(pk=locked.pk).update(
                after_seq=max(next_after, after),
                records_total=locked.records_total + batch.inserted,
                updated_at=timezone.now(),
                last_error="",
            )
        result.pages += 1
        result.fetched += len(records)
        result.inserted += batch.inserted
        result.rejected += batch.rejected
        result.tenant_ids |= batch.tenant_ids
        after = max(next_after, after)
        if not page.get("has_more") or not records:
            break
    return result


def _nodes() -> Iterable[NodeLike]:
    from gateway.selectors import node_list  # the registry lives in gateway (billing → gateway)

    return list(node_list())


def usage_ingest_all(*, nodes: Iterable[NodeLike] | None = None, feed: bool = True) -> IngestResult:
    """Ingests every registered node; a node that cannot be reached is recorded and skipped.

    Afterwards the month-to-date totals of the tenants that got new usage go to the gateway's
    quota counters and usage alerts are checked.
    """
    total = IngestResult()
    for node in nodes if nodes is not None else _nodes():
        try:
            total.merge(usage_ingest_node(node))
        except Exception as exc:  # a down node must not stop the others
            logger.warning("usage ingestion from node %s failed: %s", node.name, exc)
            total.errors[node.name] = str(exc)[:500]
            IngestCursor.objects.filter(node_name=node.name).update(last_error=str(exc)[:2000])
    if feed and total.tenant_ids:
        from billing.services.alerts import usage_alerts_check
        from billing.services.spend import spend_feed_push

        # The ledger is committed by now: a failure here is logged, and the next ingestion that
        # brings usage for these tenants sends their totals again.
        try:
            spend_feed_push(tenant_ids=total.tenant_ids)
        except Exception:
            logger.exception("spend feed to the gateway failed")
        try:
            usage_alerts_check(tenant_ids=total.tenant_ids)
        except Exception:
            logger.exception("usage alert check failed")
    return total
