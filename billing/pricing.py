"""Which price applies to a request: the tenant's plan at the request's start, then the newest
price of that model whose `effective_from` is not later than the start.

A `PriceBook` loads subscriptions and prices for a set of tenants in two queries and answers
every lookup of a batch from memory; a `PriceBookCache` keeps one across the pages of an
ingestion run while it is still complete.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.models import Price, Subscription
from billing.money import default_currency
from tenants.models import Tenant

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class AppliedPrice:
    price_id: int | None
    input_per_1m: Decimal
    output_per_1m: Decimal
    currency: str


class PriceBook:
    def __init__(self, tenant_ids: Iterable[int]) -> None:
        # Plain tuples, not model instances: a batch may touch a thousand tenants.
        self._subs: dict[int, list[tuple[datetime, datetime | None, int, str]]] = defaultdict(list)
        currencies: dict[int, str] = {}
        for tenant_id, starts, ends, plan_id, currency in (
            Subscription.objects.filter(tenant_id__in=set(tenant_ids))
            .order_by("starts_at")
            .values_list("tenant_id", "starts_at", "ends_at", "plan_id", "plan__currency")
        ):
            self._subs[tenant_id].append((starts, ends, plan_id, currency))
            currencies[plan_id] = currency
        # (plan, model) -> sorted effective dates and the matching prices
        self._dates: dict[tuple[int, str], list[datetime]] = defaultdict(list)
        self._prices: dict[tuple[int, str], list[AppliedPrice]] = defaultdict(list)
        for price_id, plan_id, model_name, effective_from, input_per_1m, output_per_1m in (
            Price.objects.filter(plan_id__in=currencies)
            .order_by("effective_from")
            .values_list("id", "plan_id", "model_name", "effective_from", "input_per_1m", "output_per_1m")
        ):
            key = (plan_id, model_name)
            self._dates[key].append(effective_from)
            self._prices[key].append(AppliedPrice(price_id, input_per_1m, output_per_1m, currencies[plan_id]))
        self._default_currency: str = default_currency()

    def plan_at(self, tenant_id: int, moment: datetime) -> tuple[int, str] | None:
        for starts, ends, plan_id, currency in reversed(self._subs.get(tenant_id, ())):
            if starts <= moment and (ends is None or moment < ends):
                return plan_id, currency
        return None

    def lookup(self, tenant_id: int, model_name: str, moment: datetime) -> AppliedPrice:
        plan = self.plan_at(tenant_id, moment)
        if plan is None:
            return AppliedPrice(None, ZERO, ZERO, self._default_currency)
        plan_id, currency = plan
        dates = self._dates.get((plan_id, model_name))
        if not dates:
            return AppliedPrice(None, ZERO, ZERO, currency)
        index = bisect.bisect_right(dates, moment) - 1
        if index < 0:
            return AppliedPrice(None, ZERO, ZERO, currency)
        return self._prices[(plan_id, model_name)][index]


# Above this many tenants a cached book is not widened: a new one covers the page's tenants only.
_CACHE_TENANTS_MAX = 20_000


class PriceBookCache:
    """One `PriceBook` kept across the pages of an ingestion run while it is still complete.

    Prices and subscriptions are never backdated (`price_set` and `subscription_create` refuse a
    moment in the past), so a book loaded at time L answers every request that started before L
    as a book loaded later would. A page holding a request that started at or after L, or a tenant
    the book does not know, gets a new book (for the tenants seen so far and the page's): tenants
    named by no row are looked up again every time, never remembered as unknown.
    """

    def __init__(self) -> None:
        self._book: PriceBook | None = None
        self._known: frozenset[int] = frozenset()
        self._loaded_at: datetime | None = None

    def book_for(self, tenant_ids: set[int], latest_start: datetime) -> tuple[PriceBook, set[int]]:
        """A book for `tenant_ids` and the subset of them that exist."""
        if (
            self._book is not None
            and self._loaded_at is not None
            and latest_start < self._loaded_at
            and tenant_ids <= self._known
        ):
            return self._book, set(tenant_ids)
        wanted = set(tenant_ids)
        if len(self._known) < _CACHE_TENANTS_MAX:
            wanted |= self._known
        loaded_at = timezone.now()  # before the reads: anything they miss starts after it
        known = set(Tenant.objects.filter(id__in=wanted).values_list("id", flat=True))
        self._book = PriceBook(known)
        self._known = frozenset(known)
        self._loaded_at = loaded_at
        return self._book, tenant_ids & known
