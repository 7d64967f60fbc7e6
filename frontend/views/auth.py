"""Sign in and out, password reset, and the sign-in lockout page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse_lazy

from frontend.forms import SignInForm


class SignInView(auth_views.LoginView):
    template_name = "frontend/auth/login.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True


class SignOutView(auth_views.LogoutView):
    """POST only (Django refuses GET), so a link or an image cannot sign anyone out."""


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "frontend/auth/password_reset.html"
    email_template_name = "frontend/auth/password_reset_email.txt"
    subject_template_name = "frontend/auth/password_reset_subject.txt"
    success_url = reverse_lazy("frontend:password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "frontend/auth/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "frontend/auth/password_reset_confirm.html"
    success_url = reverse_lazy("frontend:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "frontend/auth/password_reset_complete.html"


def lockout(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """django-axes calls this once an account and address have failed too many sign-ins."""
    minutes = round(float(settings.AXES_COOLOFF_TIME) * 60)
    return render(
        request,
        "frontend/auth/login.html",
        {"form": SignInForm(request), "locked_out": True, "cooloff_minutes": minutes},
        status=429,
    )
