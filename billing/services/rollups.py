"""Hourly and daily sums of the ledger per tenant, key and model.

Ingestion adds the rows it inserted (`rollups_apply`, same transaction as the inserts);
`usage_rollups_rebuild` recomputes any range from the ledger alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncHour

from billing.models import Bucket, UsageRecord, UsageRollup

RollupKey = tuple[str, datetime, int, int, str]  # bucket, start, tenant, key (0: none), model


@dataclass(slots=True)
class RollupSums:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What a rollup needs from one ledger row."""

    tenant_id: int
    key_id: int | None
    model_name: str
    started_at: datetime
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def rollups_aggregate(rows: Iterable[LedgerRow]) -> dict[RollupKey, RollupSums]:
    sums: dict[RollupKey, RollupSums] = {}
    for row in rows:
        key_id = row.key_id or 0
        for bucket, start in (
            (Bucket.HOUR.value, hour_floor(row.started_at)),
            (Bucket.DAY.value, day_floor(row.started_at)),
        ):
            entry = sums.get((bucket, start, row.tenant_id, key_id, row.model_name))
            if entry is None:
                entry = sums[(bucket, start, row.tenant_id, key_id, row.model_name)] = RollupSums()
            entry.requests += 1
            entry.input_tokens += row.prompt_tokens
            entry.output_tokens += row.completion_tokens
            entry.cost += row.cost
    return sums


_UPSERT_TAIL = """
ON CONFLICT (bucket, bucket_start, tenant_id, key_id, model_name) DO UPDATE SET
    requests = billing_usagerollup.requests + EXCLUDED.requests,
    input_tokens = billing_usagerollup.input_tokens + EXCLUDED.input_tokens,
    output_tokens = billing_usagerollup.output_tokens + EXCLUDED.output_tokens,
    cost = billing_usagerollup.cost + EXCLUDED.cost
"""
_COLUMNS = "(bucket, bucket_start, tenant_id, key_id, model_name, requests, input_tokens, output_tokens, cost)"


def rollups_apply(rows: Iterable[LedgerRow]) -> int:
    """Adds freshly inserted ledger rows to the rollups; call inside the inserting transaction."""
    sums = rollups_aggregate(rows)
    if not sums:
        return 0
    # A fixed order keeps concurrent ingesters from deadlocking on the same rollup rows.
    ordered = sorted(sums.items(), key=lambda item: (item[0][0], item[0][1], item[0][2], item[0][3], item[0][4]))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns: list[list[object]] = [[] for _ in range(9)]
            for (bucket, start, tenant_id, key_id, model), s in ordered:
                for index, value in enumerate(
                    (bucket, start, tenant_id, key_id, model, s.requests, s.input_tokens, s.output_tokens, s.cost)
                ):
                    columns[index].append(value)
            cursor.execute(
                f"INSERT INTO billing_usagerollup {_COLUMNS} "  # noqa: S608 - constant SQL
                "SELECT * FROM unnest(%s::varchar[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::varchar[],"
                " %s::bigint[], %s::bigint[], %s::bigint[], %s::numeric[])" + _UPSERT_TAIL,
                columns,
            )
        else:
            cursor.executemany(
                f"INSERT INTO billing_usagerollup {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
                + _UPSERT_TAIL,
                [
                    (
                        b,
                        connection.ops.adapt_datetimefield_value(start),
                        t,
                        k,
                        m,
                        s.requests,
                        s.input_tokens,
                        s.output_tokens,
                        connection.ops.adapt_decimalfield_value(s.cost),
                    )
                    for (b, start, t, k, m), s in ordered
                ],
            )
    return len(ordered)


def usage_rollups_rebuild(*, start: datetime, end: datetime, tenant_id: int | None = None) -> int:
    """Recomputes hourly and daily rollups for whole days covering [start, end) from the ledger.

    Returns the number of rollup rows written. Ingestion waits while a rebuild runs (table lock
    on PostgreSQL), so no increment is lost or counted twice.
    """
    day_start = day_floor(start)
    day_end = day_floor(end)
    if day_end < end:
        day_end += timedelta(days=1)
    written = 0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE billing_usagerollup IN EXCLUSIVE MODE")
        stale = UsageRollup.objects.filter(bucket_start__gte=day_start, bucket_start__lt=day_end)
        ledger = UsageRecord.objects.filter(started_at__gte=day_start, started_at__lt=day_end)
        if tenant_id is not None:
            stale = stale.filter(tenant_id=tenant_id)
            ledger = ledger.filter(tenant_id=tenant_id)
        stale.delete()
        for bucket, trunc in ((Bucket.HOUR, TruncHour), (Bucket.DAY, TruncDay)):
            grouped = (
                ledger.annotate(bs=trunc("started_at", tzinfo=UTC))
                .values("bs", "tenant_id", "key_id", "model_name")
                .annotate(n=Count("id"), inp=Sum("prompt_tokens"), out=Sum("completion_tokens"), total_cost=Sum("cost"))
                .order_by()
            )
            batch = [
                UsageRollup(
                    bucket=bucket.value,
                    bucket_start=row["bs"],
                    tenant_id=row["tenant_id"],
                    key_id=row["key_id"] or 0,
                    model_name=row["model_name"],
                    requests=row["n"],
                    input_tokens=row["inp"] or 0,
                    output_tokens=row["out"] or 0,
                    cost=row["total_cost"] or Decimal(0),
                )
                for row in grouped.iterator(chunk_size=5000)
            ]
            UsageRollup.objects.bulk_create(batch, batch_size=2000)
            written += len(batch)
    return written
