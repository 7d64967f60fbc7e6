"""Usage by end user and by metadata tag: read from the ledger, where those live (the rollups keep
only tenant, key and model). Reached through `billing.selectors.usage_buckets` whenever a request
groups or filters by them.

On PostgreSQL a tag filter is one jsonb containment (`metadata @> {...}`), which the GIN index on
`metadata` answers; an end-user filter or grouping uses the partial (tenant, end_user, started_at)
index. Both indexes hold only attributed rows, so unattributed traffic pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncDay, TruncHour

from billing.models import Bucket, UsageRecord
from tenants.models import Tenant


@dataclass(frozen=True, slots=True)
class AttributionQuery:
    """What a usage request asks of attribution: group by end user and/or tags, filter by them."""

    group_user: bool = False
    group_tags: tuple[str, ...] = ()
    users: tuple[str, ...] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def needed(self) -> bool:
        return self.group_user or bool(self.group_tags) or self.users is not None or bool(self.tags)


def _tag_text(name: str) -> Cast:
    # A plain text value: compared as text on every backend (SQLite would read the right side as JSON).
    return Cast(KeyTextTransform(name, "metadata"), output_field=TextField())


def _tag_filter(qs: QuerySet[UsageRecord], tags: Mapping[str, str]) -> QuerySet[UsageRecord]:
    if not tags:
        return qs
    if connection.vendor == "postgresql":
        return qs.filter(metadata__contains=dict(tags))  # jsonb @>: the GIN index
    for i, (name, value) in enumerate(tags.items()):
        qs = qs.annotate(**{f"_tag{i}": _tag_text(name)}).filter(**{f"_tag{i}": value})
    return qs


def ledger_usage_rows(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    bucket: str,
    group_by: list[str],
    attribution: AttributionQuery,
    model: Collection[str] | None = None,
    key: Collection[int] | None = None,
) -> list[dict[str, Any]]:
    """Sums per bucket and group over the ledger rows of one tenant in [start, end).

    Each row: `bucket_start`, `inp`, `out`, `n`, `cost`, and the grouped `model_name`, `key_id`,
    `end_user`, and `tag<i>` (the i-th grouped tag's value, None where the row lacks it).
    """
    trunc = TruncHour if bucket == Bucket.HOUR else TruncDay
    qs = UsageRecord.objects.filter(tenant=tenant, started_at__gte=start, started_at__lt=end)
    if model is not None:
        qs = qs.filter(model_name__in=list(model))
    if key is not None:
        # Key 0 is usage without a key (as in the rollups).
        wanted = Q(key_id__in=[k for k in key if k])
        if 0 in key:
            wanted |= Q(key_id__isnull=True)
        qs = qs.filter(wanted)
    if attribution.users is not None:
        qs = qs.filter(end_user__in=list(attribution.users))
    qs = _tag_filter(qs, attribution.tags)
    fields = ["bucket_start"]
    annotations: dict[str, Any] = {"bucket_start": trunc("started_at", tzinfo=UTC)}
    for name in group_by:
        if name == "model":
            fields.append("model_name")
        elif name == "key":
            fields.append("key_id")

    if attribution.group_user:
        fields.append("end_user")
    for i, tag in enumerate(attribution.group_tags):
        annotations[f"tag{i}"] = _tag_text(tag)
        fields.append(f"tag{i}")
    rows = (
        qs.annotate(**annotations)
        .values(*fields)
        .annotate(inp=Sum("prompt_tokens"), out=Sum("completion_tokens"), n=Count("id"), cost=Sum("cost"))
        .order_by(*fields)
    )
    return list(rows)
