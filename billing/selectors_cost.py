"""Cost of serving: engine time from the ledger next to revenue, per tenant, model or node.

Each ledger row carries `engine_ms`, the request's share of the engine steps it took part in
(inference/engine/accounting.py). Engine-seconds priced at BILLING_NODE_HOUR_PRICE per node-hour
are the cost; revenue is the ledger's usage charges (base fees and credits are not usage), and the
margin is revenue less cost where both are in the same currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from django.conf import settings
from django.db.models import Count, Sum

from billing.models import UsageRecord
from billing.money import month_next

Dimension = Literal["tenant", "model", "node"]
DIMENSIONS: tuple[Dimension, ...] = ("tenant", "model", "node")
_FIELD = {"tenant": "tenant__slug", "model": "model_name", "node": "node_name"}
_MS = Decimal("0.001")
_MONEY = Decimal("0.000001")
SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True, slots=True)
class CostRow:
    month: str  # YYYY-MM
    key: str  # the tenant's slug, the model's name or the node's name
    currency: str  # of the revenue
    requests: int
    revenue: Decimal
    engine_seconds: Decimal
    cost: Decimal  # in `cost_currency`
    cost_currency: str

    @property
    def margin(self) -> Decimal | None:
        if self.currency != self.cost_currency:
            return None
        return self.revenue - self.cost


def node_hour_price() -> tuple[Decimal, str]:
    return Decimal(settings.BILLING_NODE_HOUR_PRICE), settings.BILLING_NODE_HOUR_CURRENCY


def engine_cost(engine_seconds: Decimal, price_per_node_hour: Decimal) -> Decimal:
    return (engine_seconds * price_per_node_hour / SECONDS_PER_HOUR).quantize(_MONEY, rounding=ROUND_HALF_UP)


def serving_cost_report(*, month: datetime, by: Dimension) -> list[CostRow]:
    """One row per `by` value (and revenue currency) for the month starting at `month` (UTC)."""
    price, cost_currency = node_hour_price()
    label = f"{month.year:04d}-{month.month:02d}"
    field = _FIELD[by]
    rows = (
        UsageRecord.objects.filter(started_at__gte=month, started_at__lt=month_next(month))
        .values(field, "currency")
        .annotate(n=Count("id"), revenue=Sum("cost"), engine_ms=Sum("engine_ms"))
        .order_by(field, "currency")
    )
    report = []
    for r in rows:
        # Ledger engine_ms has at most 3 decimals; the float sum is rounded back to them.
        seconds = (Decimal(repr(r["engine_ms"] or 0.0)).quantize(_MS, rounding=ROUND_HALF_UP)) / 1000
        report.append(
            CostRow(
                month=label,
                key=r[field],
                currency=r["currency"],
                requests=r["n"],
                revenue=r["revenue"] or Decimal(0),
                engine_seconds=seconds,
                cost=engine_cost(seconds, price),
                cost_currency=cost_currency,
            )
        )
    return report


def serving_cost_totals(rows: list[CostRow]) -> CostRow | None:
    """The rows summed (same month), when they share one revenue currency."""
    if not rows or len({r.currency for r in rows}) != 1:
        return None
    price, cost_currency = node_hour_price()
    seconds = sum((r.engine_seconds for r in rows), Decimal(0))
    return CostRow(
        month=rows[0].month,
        key="total",
        currency=rows[0].currency,
        requests=sum(r.requests for r in rows),
        revenue=sum((r.revenue for r in rows), Decimal(0)),
        engine_seconds=seconds,
        cost=engine_cost(seconds, price),
        cost_currency=cost_currency,
    )


COST_CSV_COLUMNS = (
    "month",
    "dimension",
    "key",
    "requests",
    "revenue",
    "currency",
    "engine_seconds",
    "cost",
    "cost_currency",
    "margin",
)


def _plain(value: Decimal) -> str:
    """Fixed-point text without trailing zeros (never `1E+1`)."""
    return format(value.normalize(), "f") if value else "0"


def cost_csv_row(row: CostRow, by: Dimension) -> list[object]:
    margin = row.margin
    return [
        row.month,
        by,
        row.key,
        row.requests,
        _plain(row.revenue),
        row.currency,
        _plain(row.engine_seconds),
        _plain(row.cost),
        row.cost_currency,
        "" if margin is None else _plain(margin),
    ]
