"""Writes of users (accounts exist outside any tenant; memberships link them in)."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from core.errors import Conflict, ValidationFailed
from tenants.models import User
from tenants.services._validation import validate_email


def user_create(
    *,
    email: str,
    password: str | None = None,
    full_name: str = "",
    is_staff: bool = False,
    check_password: bool = False,
) -> User:
    """A user; with no password the account cannot sign in until one is set."""
    email = validate_email(email)
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(f"A user with email {email!r} exists.", param="email", code="email_taken")
    if password is not None and check_password:
        try:
            validate_password(password, User(email=email, full_name=full_name))
        except DjangoValidationError as exc:
            raise ValidationFailed(" ".join(exc.messages), param="password", code="weak_password") from exc
    try:
        with transaction.atomic():
            return User.objects.create_user(
                email, password, full_name=full_name, is_staff=is_staff, is_superuser=is_staff
            )
    except IntegrityError as exc:
        raise Conflict(f"A user with email {email!r} exists.", param="email", code="email_taken") from exc
