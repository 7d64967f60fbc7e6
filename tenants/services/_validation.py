"""Input checks the tenant services share; each raises `ValidationFailed` naming the field."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email as django_validate_email

from core.errors import PermissionRefused, ValidationFailed
from tenants.models import SLUG_VALIDATOR
from tenants.permissions import Role
from tenants.selectors import LIMIT_FIELDS

MAX_INT = 2_147_483_647  # PositiveIntegerField
MAX_BIGINT = 9_223_372_036_854_775_807  # PositiveBigIntegerField


class Unset(enum.Enum):
    """The type of `UNSET`: an argument that was not given, which differs from None ("no limit")."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


def validate_slug(slug: str) -> None:
    try:
        SLUG_VALIDATOR(slug)
    except DjangoValidationError as exc:
        raise ValidationFailed(
            "Invalid slug: use 1-50 lowercase letters, digits and inner hyphens.", param="slug", code="invalid_slug"
        ) from exc


def validate_email(email: str, param: str = "email") -> str:
    """The address, trimmed and lower-cased."""
    email = (email or "").strip().lower()
    try:
        django_validate_email(email)
    except DjangoValidationError as exc:
        raise ValidationFailed(f"Invalid email address: {email!r}.", param=param, code="invalid_email") from exc
    return email


def ensure_role(role: str, param: str = "role") -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise ValidationFailed(
            f"Unknown role {role!r}; one of: {', '.join(r.value for r in Role)}.", param=param, code="invalid_role"
        ) from exc


def ensure_may_manage_role(acting_role: Role | None, role: Role) -> None:
    """Only owners (and staff) grant, change or take away the owner role."""
    if role == Role.OWNER and acting_role is not None and acting_role != Role.OWNER:
        raise PermissionRefused("Only owners manage owners.", code="owner_required")


def validate_models(allowed_models: Iterable[str]) -> list[str]:
    names = []
    for name in allowed_models:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationFailed("Model names are non-empty strings.", param="allowed_models")
        names.append(name.strip())
    return sorted(set(names))


def validate_limit_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Per-key limits (also the tenant's): None clears one, else a bounded whole number or a cap."""
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if name not in LIMIT_FIELDS:
            raise ValidationFailed(f"{name!r} is not a per-key limit.", param=name, code="unknown_field")
        if value is None:
            clean[name] = None
            continue
        if name == "monthly_spend_cap":
            try:
                number = Decimal(str(value))
            except ArithmeticError as exc:
                raise ValidationFailed("A spend cap is a decimal amount.", param=name) from exc
            if not number.is_finite() or number < 0 or number.as_tuple().exponent < -6:  # type: ignore[operator]
                raise ValidationFailed("A spend cap is >= 0 with at most 6 decimal places.", param=name)
            clean[name] = number
        else:
            top = MAX_BIGINT if name == "monthly_token_budget" else MAX_INT
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValidationFailed(f"{name} is a whole number from 0 to {top}.", param=name)
            clean[name] = value
    return clean
