"""Helpers every dashboard view uses."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.errors import ServiceError


def service_error_to_form(form: forms.Form, exc: ServiceError) -> None:
    """Put a refused operation's message on the field it names, else on the form."""
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)


def render_invalid(
    request: HttpRequest, template: str, context: dict[str, object], *, status: int = 400
) -> HttpResponse:
    """Re-show a form with its errors; the status says nothing was saved."""
    return render(request, template, context, status=status)


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"
