"""Money and period arithmetic: pure functions, no database; the default currency (a setting)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

from babel.core import get_global
from babel.numbers import get_currency_precision, get_territory_currencies
from django.conf import settings

from core.errors import ValidationFailed

ONE_MILLION = Decimal(1_000_000)
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})$")


@cache
def tender_currencies() -> frozenset[str]:
    """ISO 4217 codes that are legal tender in some territory (CLDR's data, through babel).

    Obsolete codes (DEM), funds and metals (XAU) are not: nobody is invoiced in them.
    """
    territories = get_global("territory_currencies")
    return frozenset(code for t in territories for code in get_territory_currencies(t, tender=True))


def default_currency() -> str:
    """The currency of a tenant without a plan (and of usage priced without one)."""
    return str(settings.BILLING_DEFAULT_CURRENCY)


def currency_or_default(currency: str | None) -> str:
    return currency or default_currency()


def validate_currency(currency: str) -> str:
    value = (currency or "").strip().upper()
    if not _CURRENCY_RE.match(value):
        raise ValidationFailed("currency is a 3-letter ISO 4217 code.", param="currency", code="invalid_currency")
    if value not in tender_currencies():
        raise ValidationFailed(
            f"{value} is not a currency in use (ISO 4217).", param="currency", code="unknown_currency"
        )
    return value


@cache
def currency_exponent(currency: str) -> int:
    """Digits of the minor unit: 2 for USD, 0 for JPY or XOF, 3 for JOD (CLDR's currency data).

    Stripe, invoices and exports all count in these minor units, so an unknown code is refused
    rather than guessed.
    """
    return int(get_currency_precision(validate_currency(currency)))


def to_minor(amount: Decimal, currency: str) -> int:
    """Rounds half-up to the currency's minor unit and returns integer minor units."""
    exponent = currency_exponent(currency)
    scaled = (amount * (Decimal(10) ** exponent)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    exponent = currency_exponent(currency)
    return (Decimal(minor) / (Decimal(10) ** exponent)).quantize(Decimal(1).scaleb(-exponent))


def format_minor(minor: int, currency: str) -> str:
    """`1234` USD → `12.34`; used by exports, PDFs and emails."""
    return str(from_minor(minor, currency))


def token_cost(tokens: int, price_per_1m: Decimal) -> Decimal:
    """Exact cost of `tokens` at a price per 1M tokens (no rounding)."""
    return Decimal(tokens) * price_per_1m / ONE_MILLION


def period_parse(value: str, *, param: str = "period") -> tuple[datetime, datetime]:
    """`YYYY-MM` → (first instant of the month, first instant of the next), both UTC."""
    match = _PERIOD_RE.match((value or "").strip())
    if not match:
        raise ValidationFailed("period must look like YYYY-MM.", param=param, code="invalid_period")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12 or not 2000 <= year <= 9998:
        raise ValidationFailed(f"{value!r} is not a valid month.", param=param, code="invalid_period")
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, month_next(start)


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def month_next(start: datetime) -> datetime:
    if start.month == 12:
        return datetime(start.year + 1, 1, 1, tzinfo=UTC)
    return datetime(start.year, start.month + 1, 1, tzinfo=UTC)


def period_label(start: datetime) -> str:
    return f"{start.year:04d}-{start.month:02d}"
