"""Serializer helpers shared by the management API (and the apps that extend it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

# Bounds of the database columns: a bigger number is a 400, not a database error.
MAX_INT = 2_147_483_647
MAX_BIGINT = 9_223_372_036_854_775_807


class StrictSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An input serializer that refuses fields it does not know (a typo must not pass silently)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - {name for name, f in self.fields.items() if not f.read_only})
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: [serializers.ErrorDetail(f"Unknown field {unknown[0]!r}.", code="unknown_field")]}
                )
        return super().to_internal_value(data)


def page_serializer(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:  # type: ignore[type-arg]
    """The schema of a paginated list of `item`, for drf-spectacular."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


class StrictCharField(serializers.CharField):
    """A string, and only a string (DRF's CharField would turn 5 into "5")."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer, not "5", 5.0 or true."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_value", MAX_INT)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class MoneyField(serializers.DecimalField):
    """A decimal amount as a JSON string ("12.50") or number; output as a string."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 14)
        kwargs.setdefault("decimal_places", 6)
        kwargs.setdefault("min_value", 0)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)
