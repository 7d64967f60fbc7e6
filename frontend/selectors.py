"""Reads the dashboard needs from gateway and billing, gathered in one place.

Each function calls the owning app's selectors and shapes the result for a template or a
chart; no business rules (prices, limits, permissions) live here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing.money import currency_or_default, month_start
from billing.selectors import PlanPrices, UsageResult, plan_list, tenant_plan_get, usage_buckets, usage_summary_month
from billing.services.spend import month_to_date
from billing.usage_attribution import AttributionQuery
from gateway.models import InferenceNode, NodeState
from gateway.selectors import model_list_for_tenant, node_list
from tenants.models import APIKey, Tenant
from tenants.selectors import key_list, tenant_limits_get

CHART_DAYS = 30
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Gauge:
    label: str
    used: Decimal | int
    limit: Decimal | int | None
    unit: str = ""

    @property
    def percent(self) -> int | None:
        if not self.limit:
            return None
        return min(100, round(Decimal(self.used) * 100 / Decimal(self.limit)))

    @property
    def state(self) -> str:
        pct = self.percent
        if pct is None or pct < 80:
            return "ok"
        return "warn" if pct < 100 else "bad"


@dataclass(frozen=True)
class KeyUsage:
    key_id: int
    label: str
    tokens: int
    spend: Decimal


def tenant_model_names(tenant: Tenant) -> list[str]:
    """Public names of the models the tenant may use (for key allow-lists)."""
    return [model.name for model in model_list_for_tenant(tenant=tenant)]


def node_rows() -> list[InferenceNode]:
    """Every registered inference node with its state and last heartbeat."""
    return list(node_list())


def inference_status() -> dict[str, Any]:
    nodes = node_rows()
    up = sum(1 for n in nodes if n.state == NodeState.UP)
    return {"nodes_total": len(nodes), "nodes_up": up, "nodes": nodes}


def plan_currency(tenant: Tenant) -> str:
    plan = tenant_plan_get(tenant).plan
    return currency_or_default(plan.currency if plan is not None else None)


def plan_list_active() -> list[PlanPrices]:
    """Plans staff can put a tenant on, with the prices each charges now."""
    return plan_list()


def _key_labels(tenant: Tenant, key_ids: Iterable[int]) -> dict[int, str]:
    wanted = set(key_ids)
    keys: Iterable[APIKey] = key_list(tenant=tenant).filter(id__in=wanted) if wanted else []
    return {key.pk: f"{key.name} ({key.masked})" for key in keys}


def chart_config(labels: list[str], datasets: list[dict[str, Any]], *, stacked: bool = False) -> dict[str, Any]:
    """A Chart.js bar chart configuration (rendered with json_script, drawn by app.js)."""
    return {
        "type": "bar",
        "data": {"labels": labels, "datasets": datasets},
        "options": {
            "responsive": True,
            "maintainAspectRatio": False,
            "animation": False,
            "scales": {"x": {"stacked": stacked}, "y": {"stacked": stacked, "beginAtZero": True}},
        },
    }


def daily_token_chart(tenant: Tenant, *, start: datetime, end: datetime) -> dict[str, Any]:
    """Input and output tokens per day in [start, end), empty days included."""
    buckets = usage_buckets(tenant=tenant, start=start, end=end, bucket="day", group_by=[])
    labels = [b.start.strftime("%m-%d") for b in buckets]
    inputs = [sum(r.input_tokens for r in b.results) for b in buckets]
    outputs = [sum(r.output_tokens for r in b.results) for b in buckets]
    return chart_config(
        labels,
        [
            {"label": "Input tokens", "data": inputs, "backgroundColor": "#1e88e5"},
            {"label": "Output tokens", "data": outputs, "backgroundColor": "#43a047"},
        ],
        stacked=True,
    )


def overview_data(tenant: Tenant, *, own_keys_of: int | None = None) -> dict[str, Any]:
    """This month against the limits, the last 30 days, top models and keys, inference status.

    `own_keys_of`: a user id when the viewer may see only the keys they created.
    """
    now = timezone.now()
    limits = tenant_limits_get(tenant)
    summary = usage_summary_month(tenant=tenant, month=now)
    requests = sum(s.requests for s in summary)
    tokens = sum(s.input_tokens + s.output_tokens for s in summary)
    spend = sum((s.cost for s in summary), Decimal(0))
    currency = plan_currency(tenant)
    cap = limits.monthly_spend_cap
    gauges = [
        Gauge("Requests this month", requests, None),
        Gauge("Tokens this month", tokens, limits.monthly_token_budget),
        Gauge("Spend this month", spend.quantize(CENT), cap.quantize(CENT) if cap is not None else None, currency),
    ]
    top_models = sorted(summary, key=lambda s: s.input_tokens + s.output_tokens, reverse=True)[:5]
    per_key = [m for m in month_to_date(tenant_ids=[tenant.pk], now=now) if m.key_id is not None]
    if own_keys_of is not None:
        mine = set(key_list(tenant=tenant, created_by_id=own_keys_of).values_list("id", flat=True))
        per_key = [m for m in per_key if m.key_id in mine]
    per_key.sort(key=lambda m: m.tokens, reverse=True)
    per_key = per_key[:5]
    labels = _key_labels(tenant, (m.key_id for m in per_key if m.key_id is not None))
    top_keys = [
        KeyUsage(m.key_id, labels.get(m.key_id, f"key #{m.key_id}"), m.tokens, m.spend)
        for m in per_key
        if m.key_id is not None
    ]
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    chart = daily_token_chart(tenant, start=day - timedelta(days=CHART_DAYS - 1), end=day + timedelta(days=1))
    return {
        "limits": limits,
        "gauges": gauges,
        "month_start": month_start(now),
        "currency": currency,
        "top_models": top_models,
        "top_keys": top_keys,
        "chart": chart,
        "status": inference_status(),
    }


@dataclass(frozen=True)
class UsageRow:
    start: datetime
    model: str
    key_label: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    group: str = ""  # the end user or tag value, when the report is grouped by one


def _key_label(key_id: int | None, key_labels: dict[int, str]) -> str:
    return key_labels.get(key_id, f"key #{key_id}") if key_id else "no key"


def _group_label(result: UsageResult) -> str:
    if result.tags is not None:
        value = next(iter(result.tags.values()), None)
        return "(untagged)" if value is None else value
    return result.user or "(no end user)"


def usage_report(
    tenant: Tenant,
    *,
    start: datetime,
    end: datetime,
    bucket: str,
    model: str | None,
    key_id: int | None,
    key_labels: dict[int, str],
    attribution: AttributionQuery | None = None,
) -> tuple[list[UsageRow], dict[str, Any]]:
    """Rows per bucket, model and key in [start, end) narrowed to one model or key, and a chart;
    with `attribution`, grouped by end user or a tag and narrowed to one of each."""
    grouped = attribution is not None and (attribution.group_user or bool(attribution.group_tags))
    buckets = usage_buckets(
        tenant=tenant,
        start=start,
        end=end,
        bucket=bucket,
        group_by=["model"] if grouped else ["model", "key"],
        model=model,
        key=key_id,
        attribution=attribution,
    )
    rows: list[UsageRow] = []
    labels: list[str] = []
    inputs: list[int] = []
    outputs: list[int] = []
    label_format = "%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d"
    for b in buckets:
        labels.append(b.start.strftime(label_format))
        inputs.append(sum(r.input_tokens for r in b.results))
        outputs.append(sum(r.output_tokens for r in b.results))
        for r in b.results:
            rows.append(
                UsageRow(
                    start=b.start,
                    model=r.model or "",
                    key_label=_key_label(r.api_key_id, key_labels) if not grouped else "",
                    requests=r.requests,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    cost=r.cost,
                    group=_group_label(r) if grouped else "",
                )
            )
    chart = chart_config(
        labels,
        [
            {"label": "Input tokens", "data": inputs, "backgroundColor": "#1e88e5"},
            {"label": "Output tokens", "data": outputs, "backgroundColor": "#43a047"},
        ],
        stacked=True,
    )
    return rows, chart
