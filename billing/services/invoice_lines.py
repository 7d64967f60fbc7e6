"""An invoice's lines and totals from a tenant's ledger sums: pure arithmetic, no database.

Lines: one per model, version, token kind and price (a price change mid-period splits a
model's usage into lines), the plan's base fee, and the included allowance as a discount.
Each line is rounded half-up to the currency's minor unit; totals are sums of rounded lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.models import LineType, TokenKind
from billing.money import to_minor, token_cost


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Ledger sums of one tenant for one model, version and price within a period."""

    model_name: str
    model_version: str
    price_id: int | None
    input_per_1m: Decimal
    output_per_1m: Decimal
    prompt_tokens: int
    completion_tokens: int
    first_at: datetime
    last_at: datetime
    # The currency the ledger priced this usage in; "" when unknown (taken as the invoice's).
    currency: str = ""


@dataclass(slots=True)
class LineDraft:
    line_type: str
    description: str
    amount_exact: Decimal
    amount_minor: int
    model_name: str = ""
    model_version: str = ""
    token_kind: str = ""
    units: int = 1
    unit_price_per_1m: Decimal | None = None
    usage_start: datetime | None = None
    usage_end: datetime | None = None


def invoice_lines_compute(
    *, groups: list[UsageGroup], currency: str, base_fee: Decimal, included_tokens: int, plan_name: str = ""
) -> list[LineDraft]:
    """The lines of an invoice: pure arithmetic, no database (tests drive it directly)."""
    usage: list[LineDraft] = []
    ordered = sorted(groups, key=lambda g: (g.model_name, g.model_version, g.first_at, g.price_id or 0))
    for group in ordered:
        for kind, tokens, price in (
            (TokenKind.INPUT.value, group.prompt_tokens, group.input_per_1m),
            (TokenKind.OUTPUT.value, group.completion_tokens, group.output_per_1m),
        ):
            if tokens <= 0:
                continue
            exact = token_cost(tokens, price)
            usage.append(
                LineDraft(
                    line_type=LineType.USAGE.value,
                    description=f"{group.model_name} {kind} tokens",
                    model_name=group.model_name,
                    model_version=group.model_version,
                    token_kind=kind,
                    units=tokens,
                    unit_price_per_1m=price,
                    usage_start=group.first_at,
                    usage_end=group.last_at,
                    amount_exact=exact,
                    amount_minor=to_minor(exact, currency),
                )
            )
    lines: list[LineDraft] = []
    if base_fee > 0:
        lines.append(
            LineDraft(
                line_type=LineType.BASE_FEE.value,
                description=f"{plan_name} monthly base fee".strip(),
                amount_exact=base_fee,
                amount_minor=to_minor(base_fee, currency),
            )
        )
    lines.extend(usage)
    if included_tokens > 0 and usage:
        # The allowance covers usage lines in line order, at each line's own price.
        remaining = included_tokens
        covered_tokens = 0
        value = Decimal(0)
        for line in usage:
            if remaining <= 0:
                break
            take = min(remaining, line.units)
            remaining -= take
            covered_tokens += take
            value += token_cost(take, line.unit_price_per_1m or Decimal(0))
        usage_minor = sum(line.amount_minor for line in usage)
        discount_minor = min(to_minor(value, currency), usage_minor)
        if discount_minor > 0:
            lines.append(
                LineDraft(
                    line_type=LineType.DISCOUNT.value,
                    description=f"Included allowance: {covered_tokens:,} of {included_tokens:,} tokens",
                    units=covered_tokens,
                    amount_exact=-value,
                    amount_minor=-discount_minor,
                )
            )
    return lines


def invoice_totals(lines: list[LineDraft]) -> dict[str, int]:
    subtotal = sum(line.amount_minor for line in lines if line.amount_minor > 0)
    discount = -sum(line.amount_minor for line in lines if line.amount_minor < 0)
    tax = 0
    return {
        "subtotal_minor": subtotal,
        "discount_minor": discount,
        "tax_minor": tax,
        "total_minor": subtotal - discount + tax,
    }
