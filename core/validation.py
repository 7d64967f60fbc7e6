"""Model validation for services: Django's errors become the one `ValidationFailed`."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models

from core.errors import ValidationFailed


def validation_failed_from_django(exc: DjangoValidationError) -> ValidationFailed:
    """A ValidationFailed naming the first bad field (None for model-wide errors) and its messages."""
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.error_dict.items()))
        message = "; ".join(str(m) for e in errors for m in e.messages)
        return ValidationFailed(message, param=None if field == "__all__" else field)
    return ValidationFailed("; ".join(exc.messages))


def full_clean_or_raise(instance: models.Model, *, exclude: Iterable[str] = ()) -> None:
    """Field and model validation; uniqueness and constraints are left to the database (and its
    IntegrityError), which sees concurrent writes that a query here would miss."""
    try:
        instance.full_clean(exclude=list(exclude), validate_unique=False, validate_constraints=False)
    except DjangoValidationError as exc:
        raise validation_failed_from_django(exc) from exc
