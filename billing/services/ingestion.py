"""Pulling every node's usage journal into the ledger.

Per node: fetch a page after the stored cursor (outside any transaction; the next page is fetched
and parsed in a background thread while this one is written), then in one transaction lock the
cursor row, insert the page (duplicates ignored on `request_id`, the
attempt's own id: unique per attempt, so only a record fetched twice is ever dropped), add the
inserted rows to the rollups and move the cursor. A crash between fetch and commit leaves the
cursor where it was; the next run fetches the same page and the unique request id drops repeats.
Nodes are ingested concurrently (`BILLING_INGEST_CONCURRENCY`, one connection each); rollup rows
are upserted in sorted order, so concurrent pages wait for each other but never deadlock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from operator import attrgetter
from typing import Any, Protocol

import orjson
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import JSONField
from django.utils import timezone
from psycopg.types.json import Jsonb

from billing.models import IngestCursor, UsageRecord
from billing.money import token_cost
from billing.pricing import AppliedPrice, PriceBookCache
from billing.services.rollups import LEDGER_COLUMNS, rollups_add_ledger_rows, rollups_add_sql
from wire.client import usage_pull
from wire.usage import JournalPage, JournalRecord, RejectedRecord

logger = logging.getLogger(__name__)
records_log = logging.getLogger("billing.ingestion.records")

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


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and one is built per
# ingested record. Nothing changes an entry after it is made.
@dataclass(slots=True)
class LedgerEntry:
    """One new ledger row (`billing_usagerecord`); the field names are its columns."""

    request_id: str
    client_request_id: str
    tenant_id: int
    key_id: int | None
    model_name: str
    model_version: str
    node_name: str
    journal_seq: int
    prompt_tokens: int
    completion_tokens: int
    outcome: str
    queue_ms: int
    ttft_ms: int | None
    duration_ms: int
    started_at: datetime
    finished_at: datetime
    price_id: int | None
    input_price_per_1m: Decimal
    output_price_per_1m: Decimal
    currency: str
    cost: Decimal
    ingested_at: datetime
    end_user: str
    metadata: dict[str, str]
    trace_id: str
    engine_ms: float

    def values(self) -> tuple[Any, ...]:
        return _entry_values(self)  # type: ignore[no-any-return]


LEDGER_ENTRY_COLUMNS = tuple(f.name for f in fields(LedgerEntry))
# One C-level call per row instead of a generator of getattr calls (the COPY loop is hot).
_entry_values = attrgetter(*LEDGER_ENTRY_COLUMNS)


def _bounded(value: int, name: str, *, maximum: int = _INT32_MAX) -> int:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} out of range: {value!r}")
    return value


def _as_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _billable(record: JournalRecord) -> JournalRecord:
    """The record if the ledger can hold it (the wire checks shape, this checks the columns)."""
    if len(record.request_id) > 128:
        raise ValueError("request_id is longer than 128 characters")
    if len(record.model) > 200:
        raise ValueError("model is longer than 200 characters")
    _bounded(record.seq, "seq", maximum=2**63 - 1)
    for name in ("prompt_tokens", "completion_tokens", "queue_ms", "duration_ms"):
        _bounded(int(getattr(record, name)), name)
    if record.ttft_ms is not None:
        _bounded(int(record.ttft_ms), "ttft_ms")
    _as_time(record.started_at)
    _as_time(record.finished_at or record.started_at)
    return record


def _ledger_entry(record: JournalRecord, price: AppliedPrice, *, node_name: str, now: datetime) -> LedgerEntry:
    started = _as_time(record.started_at)
    return LedgerEntry(
        request_id=record.request_id,
        client_request_id=(record.client_request_id or record.request_id)[:128],
        tenant_id=record.tenant,
        key_id=record.key,
        model_name=record.model,
        model_version=record.model_version[:200],
        node_name=node_name,
        journal_seq=record.seq,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        outcome=record.outcome,
        queue_ms=int(record.queue_ms),
        ttft_ms=None if record.ttft_ms is None else int(record.ttft_ms),
        duration_ms=int(record.duration_ms),
        started_at=started,
        finished_at=_as_time(record.finished_at) if record.finished_at else started,
        price_id=price.price_id,
        input_price_per_1m=price.input_per_1m,
        output_price_per_1m=price.output_per_1m,
        currency=price.currency,
        cost=usage_cost(record.prompt_tokens, record.completion_tokens, price.input_per_1m, price.output_per_1m),
        ingested_at=now,
        end_user=record.end_user,
        metadata=record.metadata,
        trace_id=record.trace_id,
        engine_ms=record.engine_ms,
    )


def usage_cost(prompt_tokens: int, completion_tokens: int, input_per_1m: Decimal, output_per_1m: Decimal) -> Decimal:
    """Exact cost of one request (no rounding: invoices round per line)."""
    return token_cost(prompt_tokens, input_per_1m) + token_cost(completion_tokens, output_per_1m)


_COLUMN_LIST = ", ".join(LEDGER_ENTRY_COLUMNS)
# The ledger's model fields in LedgerEntry's order: the staging table's types and each value's
# adaptation come from them, so a new column is a field of LedgerEntry and nothing more here.
_MODEL_FIELDS = [{f.attname: f for f in UsageRecord._meta.concrete_fields}[name] for name in LEDGER_ENTRY_COLUMNS]
_JSON_AT = tuple(i for i, f in enumerate(_MODEL_FIELDS) if isinstance(f, JSONField))
_STAGE = "billing_ingest_stage"


def _json_dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@cache
def _pg_stage_create() -> str:
    # Session-local staging table: COPY is the fastest way in, the insert below the one way out.
    columns = ", ".join(
        f"{name} {f.db_type(connection)}" for name, f in zip(LEDGER_ENTRY_COLUMNS, _MODEL_FIELDS, strict=True)
    )
    return f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ({columns}) ON COMMIT DELETE ROWS"


# One statement: insert new rows (repeats dropped on request_id) and add exactly those rows to the
# rollups with the one rollup statement.
_ROLL_UP_INSERTED, _ROLL_UP_PARAMS = rollups_add_sql("inserted")
_PG_INSERT_AND_ROLL_UP = f"""
WITH inserted AS (
    INSERT INTO billing_usagerecord ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM {_STAGE} ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING {", ".join(LEDGER_COLUMNS)}
),
rolled AS ({_ROLL_UP_INSERTED})
SELECT tenant_id, count(*) FROM inserted GROUP BY tenant_id
"""  # noqa: S608 - constant SQL
_GENERIC_INSERT = (
    f"INSERT INTO billing_usagerecord ({_COLUMN_LIST}) VALUES ("  # noqa: S608 - constant SQL
    + ", ".join("%s" for _ in LEDGER_ENTRY_COLUMNS)
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


@dataclass(slots=True)
class InsertResult:
    inserted: int = 0
    rejected: int = 0
    tenant_ids: set[int] = field(default_factory=set)


def _insert_postgresql(entries: Iterable[LedgerEntry]) -> dict[int, int]:
    # The staging table empties on commit, so COPY and insert must share one transaction.
    with transaction.atomic(), connection.cursor() as cursor:
        # Safe to skip the WAL flush wait: the cursor moves in this same transaction, so a commit
        # lost in a database crash is simply fetched again from the node's journal.
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(_pg_stage_create())
        with cursor.copy(f"COPY {_STAGE} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for entry in entries:
                row = entry.values()
                if _JSON_AT:
                    row = tuple(Jsonb(v, dumps=_json_dumps) if i in _JSON_AT else v for i, v in enumerate(row))
                copy.write_row(row)
        cursor.execute(_PG_INSERT_AND_ROLL_UP, _ROLL_UP_PARAMS)
        counts = {int(tenant_id): int(n) for tenant_id, n in cursor.fetchall()}
        # Empty for the next batch of this transaction (a commit empties it as well).
        cursor.execute(f"DELETE FROM {_STAGE}")  # noqa: S608 - constant SQL
    return counts


_ID_CHUNK = 500  # under SQLite's limit on query parameters


def _insert_generic(entries: Iterable[LedgerEntry]) -> dict[int, int]:
    """Row by row (the embedded SQLite database of the demo), then the one rollup statement."""
    counts: dict[int, int] = {}
    inserted: list[str] = []
    with connection.cursor() as cursor:
        for entry in entries:
            adapted = [f.get_db_prep_save(v, connection) for f, v in zip(_MODEL_FIELDS, entry.values(), strict=True)]
            cursor.execute(_GENERIC_INSERT, adapted)
            if cursor.fetchone():
                inserted.append(entry.request_id)
                counts[entry.tenant_id] = counts.get(entry.tenant_id, 0) + 1
    for start in range(0, len(inserted), _ID_CHUNK):
        rollups_add_ledger_rows(UsageRecord.objects.filter(request_id__in=inserted[start : start + _ID_CHUNK]))
    return counts


def usage_records_insert(
    records: Sequence[JournalRecord], *, node_name: str, prices: PriceBookCache | None = None
) -> InsertResult:
    """Prices journal records, inserts the new ones into the ledger and adds them to the rollups.

    Runs inside the caller's transaction. Records that cannot be billed (out of the ledger's
    range, unknown tenant) are logged and skipped so one bad record never blocks a node's journal.
    `prices` keeps the price book of earlier pages of the same run where it is still complete.
    """
    result = InsertResult()
    billable: dict[str, JournalRecord] = {}
    for record in records:
        try:
            _billable(record)
        except ValueError as exc:
            result.rejected += 1
            logger.error("usage record rejected from node %s: %s (%r)", node_name, exc, record.request_id)
            continue
        billable.setdefault(record.request_id, record)
    if not billable:
        return result
    tenant_ids = {record.tenant for record in billable.values()}
    latest = max(_as_time(record.started_at) for record in billable.values())
    book, known = (prices or PriceBookCache()).book_for(tenant_ids, latest)
    if known != tenant_ids:
        for request_id in [rid for rid, record in billable.items() if record.tenant not in known]:
            result.rejected += 1
            logger.error("usage record %s from node %s names an unknown tenant", request_id, node_name)
            del billable[request_id]
    now = timezone.now()
    entries = [
        _ledger_entry(
            record, book.lookup(record.tenant, record.model, _as_time(record.started_at)), node_name=node_name, now=now
        )
        for record in billable.values()
    ]
    counts = _insert_postgresql(entries) if connection.vendor == "postgresql" else _insert_generic(entries)
    for record in billable.values():
        # Links the request (its id, its trace) to its ledger row in the logs.
        records_log.info(
            "usage record ingested",
            extra={
                "request_id": record.client_request_id,
                "attempt_id": record.request_id,
                "trace_id": record.trace_id,
                "tenant": record.tenant,
                "key_id": record.key,
                "model": record.model,
                "node": node_name,
                "outcome": record.outcome,
            },
        )
    result.inserted = sum(counts.values())
    result.tenant_ids = set(counts)
    return result


def _node_secret() -> str:
    return str(settings.INFERENCE_SHARED_SECRET).split(",")[0].strip()


_Fetched = tuple[JournalPage, list[RejectedRecord]]


def _page_fetch(base_url: str, *, after: int, limit: int) -> _Fetched:
    """One page, fetched and parsed; no database (runs in the prefetch thread)."""
    return JournalPage.parse(usage_pull(base_url, _node_secret(), after=after, limit=limit))


def usage_ingest_node(node: NodeLike, *, page_size: int | None = None, max_pages: int | None = None) -> IngestResult:
    """Ingests one node's journal from its cursor to the end (or `max_pages` pages).

    The page after the current one is fetched and parsed in a second thread while the current
    one is written, so the node's HTTP and JSON time overlaps the database's.
    """
    name = node.name
    page_size = page_size or settings.BILLING_INGEST_PAGE_SIZE
    result = IngestResult(nodes=1)
    cursor_row, _ = IngestCursor.objects.get_or_create(node_name=name)
    after = cursor_row.after_seq
    prices = PriceBookCache()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-fetch-{name}") as fetcher:

        def fetch(start: int) -> Future[_Fetched]:
            return fetcher.submit(_page_fetch, node.base_url, after=start, limit=page_size)

        pending: Future[_Fetched] | None = fetch(after)
        while pending is not None and (max_pages is None or result.pages < max_pages):
            page, malformed = pending.result()
            pending = None
            for bad in malformed:
                logger.error("usage record rejected from node %s: %s (%r)", name, bad.reason, bad.request_id)
            records = page.records
            next_after = max(page.next_after, after)
            last = not page.has_more or not (records or malformed)
            if not last and (max_pages is None or result.pages + 1 < max_pages):
                pending = fetch(next_after)
            with transaction.atomic():
                locked = IngestCursor.objects.select_for_update().get(node_name=name)
                if locked.after_seq != after:
                    # Another ingester moved this node on while we fetched: continue from there.
                    after = locked.after_seq
                    if pending is not None:
                        pending.cancel()
                    pending = fetch(after)
                    continue
                batch = usage_records_insert(records, node_name=name, prices=prices)
                IngestCursor.objects.filter(pk=locked.pk).update(
                    after_seq=next_after,
                    records_total=locked.records_total + batch.inserted,
                    updated_at=timezone.now(),
                    last_error="",
                )
            result.pages += 1
            result.fetched += len(records) + len(malformed)
            result.inserted += batch.inserted
            result.rejected += batch.rejected + len(malformed)
            result.tenant_ids |= batch.tenant_ids
            after = next_after
            if last:
                break
        if pending is not None:
            pending.cancel()
    return result


def _nodes() -> Iterable[NodeLike]:
    from gateway.selectors import node_list  # the registry lives in gateway (billing → gateway)

    return list(node_list())


def _ingest_or_record(node: NodeLike) -> IngestResult:
    try:
        return usage_ingest_node(node)
    except Exception as exc:  # a down node must not stop the others
        logger.warning("usage ingestion from node %s failed: %s", node.name, exc)
        IngestCursor.objects.filter(node_name=node.name).update(last_error=str(exc)[:2000])
        return IngestResult(errors={node.name: str(exc)[:500]})


def _ingest_in_thread(node: NodeLike) -> IngestResult:
    try:
        return _ingest_or_record(node)
    finally:
        connections.close_all()  # this thread's own connection


def usage_ingest_all(*, nodes: Iterable[NodeLike] | None = None, feed: bool = True) -> IngestResult:
    """Ingests every registered node; a node that cannot be reached is recorded and skipped.

    Afterwards the month-to-date totals of the tenants that got new usage go to the gateway's
    quota counters and usage alerts are checked.
    """
    total = IngestResult()
    todo = list(nodes if nodes is not None else _nodes())
    workers = min(len(todo), max(1, settings.BILLING_INGEST_CONCURRENCY))
    # Inside a caller's transaction other connections could not see its rows: one at a time then.
    if workers <= 1 or connection.in_atomic_block or connection.vendor != "postgresql":
        for node in todo:
            total.merge(_ingest_or_record(node))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-node") as pool:
            for outcome in pool.map(_ingest_in_thread, todo):
                total.merge(outcome)
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
