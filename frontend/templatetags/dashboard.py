"""Template filters of the dashboard."""

from __future__ import annotations

from django import template

from billing.money import format_minor

register = template.Library()


@register.filter
def minor(amount: int | None, currency: str) -> str:
    """Integer minor units as a decimal amount in the currency (`1234`, USD → `12.34`)."""
    if amount is None:
        return ""
    return format_minor(int(amount), currency)
