"""Hourly and daily sums of the ledger per tenant, key and model.

One arithmetic, in the database: `rollups_add_sql` adds a set of ledger rows to the rollups
(INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE, on PostgreSQL and SQLite alike).
Ingestion runs it over the rows it just inserted (same transaction); `usage_rollups_rebuild`
deletes a range and runs it over the ledger rows of that range.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import QuerySet

from billing.models import UsageRecord, UsageRollup

# What a rollup needs from each ledger row; a source relation must have these columns.
LEDGER_COLUMNS = ("started_at", "tenant_id", "key_id", "model_name", "prompt_tokens", "completion_tokens", "cost")


_Sql = tuple[str, Sequence[Any]]


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def rollups_add_sql(source: str, source_params: Sequence[Any] = ()) -> tuple[str, list[Any]]:
    """The statement adding every ledger row of `source` (a table name or a parenthesised query
    with `LEDGER_COLUMNS`) to its hourly and daily rollups.

    Rows go in sorted order so concurrent ingesters take the rollup rows' locks in the same order.
    """
    ops = connection.ops
    # Django's own truncation, so UTC hours and days mean the same here as in the ORM.
    hour_sql, hour_params = cast(_Sql, ops.datetime_trunc_sql("hour", "u.started_at", (), "UTC"))
    day_sql, day_params = cast(_Sql, ops.datetime_trunc_sql("day", "u.started_at", (), "UTC"))
    # `WHERE TRUE` keeps SQLite from reading ON CONFLICT as part of the join.
    sql = f"""
INSERT INTO billing_usagerollup
    (bucket, bucket_start, tenant_id, key_id, model_name, requests, input_tokens, output_tokens, cost)
SELECT b.bucket AS r_bucket,
       CASE b.bucket WHEN 'hour' THEN {hour_sql} ELSE {day_sql} END AS r_start,
       u.tenant_id AS r_tenant, COALESCE(u.key_id, 0) AS r_key, u.model_name AS r_model,
       COUNT(*), SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.cost)
FROM {source} u CROSS JOIN (SELECT 'hour' AS bucket UNION ALL SELECT 'day') b
WHERE TRUE
GROUP BY r_bucket, r_start, r_tenant, r_key, r_model
ORDER BY r_bucket, r_start, r_tenant, r_key, r_model
ON CONFLICT (bucket, bucket_start, tenant_id, key_id, model_name) DO UPDATE SET
    requests = billing_usagerollup.requests + EXCLUDED.requests,
    input_tokens = billing_usagerollup.input_tokens + EXCLUDED.input_tokens,
    output_tokens = billing_usagerollup.output_tokens + EXCLUDED.output_tokens,
    cost = billing_usagerollup.cost + EXCLUDED.cost
"""  # noqa: S608 - `source` is constant SQL or a compiled queryset, never input
    return sql, [*hour_params, *day_params, *source_params]  # in the order they appear


def rollups_add_ledger_rows(ledger: QuerySet[UsageRecord]) -> int:
    """Adds the ledger rows of a `UsageRecord` queryset to the rollups; returns rollup rows touched."""
    source, params = ledger.values(*LEDGER_COLUMNS).query.sql_with_params()
    sql, all_params = rollups_add_sql(f"({source})", params)
    with connection.cursor() as cursor:
        cursor.execute(sql, all_params)
        return max(cursor.rowcount, 0)


def usage_rollups_rebuild(*, start: datetime, end: datetime, tenant_id: int | None = None) -> int:
    """Recomputes hourly and daily rollups for whole days covering [start, end) from the ledger.

    Returns the number of rollup rows written. Ingestion waits while a rebuild runs (table lock
    on PostgreSQL), so no increment is lost or counted twice.
    """
    day_start = day_floor(start)
    day_end = day_floor(end)
    if day_end < end:
        day_end += timedelta(days=1)
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
        return rollups_add_ledger_rows(ledger.order_by())
