"""Dashboard forms: they check shape and choices; services enforce the business rules."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from tenants.permissions import Role
from wire.usage import END_USER_MAX, METADATA_MAX_KEY, METADATA_MAX_VALUE


class SignInForm(AuthenticationForm):
    """Email and password; the field keeps the name `username` that django-axes watches."""

    username = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    error_messages = {
        "invalid_login": "That email and password do not match an account.",
        "inactive": "This account is disabled.",
    }


ROLE_CHOICES = [(r.value, r.value.capitalize()) for r in Role]
KIND_CHOICES = [("inference", "Inference (calls /v1)"), ("admin", "Admin (management API)")]
GRACE_CHOICES = [
    ("0", "None: the old secret stops now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
]


class KeyCreateForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, help_text="Something to recognise the key by.")
    kind = forms.ChoiceField(label="Kind", choices=KIND_CHOICES, initial="inference", widget=forms.RadioSelect)
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=(
            "Inference keys carry inference and models:read; admin keys carry management scopes. "
            "Leave empty for the kind's defaults. You can grant only scopes you hold."
        ),
    )
    allowed_models = forms.MultipleChoiceField(
        label="Models",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave empty to allow every model of the tenant.",
    )
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The key stops working at 00:00 UTC that day.",
    )

    def __init__(self, *args: Any, scopes: list[str], models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scope_field = self.fields["scopes"]
        model_field = self.fields["allowed_models"]
        assert isinstance(scope_field, forms.MultipleChoiceField)
        assert isinstance(model_field, forms.MultipleChoiceField)
        scope_field.choices = [(s, s) for s in scopes]
        model_field.choices = [(m, m) for m in models]

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("A key needs a name.")
        return name

    def clean_expires_on(self) -> Any:
        from django.utils import timezone

        value = self.cleaned_data.get("expires_on")
        if value is not None and value <= timezone.now().date():
            raise forms.ValidationError("Pick a date after today.")
        return value


class KeyRotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(
        label="Keep the old secret working for", choices=GRACE_CHOICES, coerce=int, initial="0"
    )


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    role = forms.ChoiceField(label="Role", choices=ROLE_CHOICES, initial="developer")


class RoleChangeForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=ROLE_CHOICES)


class InvitationAcceptForm(forms.Form):
    """For someone without an account yet; signed-in users just confirm."""

    full_name = forms.CharField(label="Your name", max_length=200, required=False)
    password1 = forms.CharField(
        label="Choose a password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), required=False
    )
    password2 = forms.CharField(
        label="Repeat the password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), required=False
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password1") != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        return data


class AuditFilterForm(forms.Form):
    action = forms.CharField(label="Action", required=False, max_length=64, help_text="e.g. key or key.revoke")
    actor = forms.CharField(label="Actor (email or key)", required=False, max_length=254)
    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To (inclusive, UTC)", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            self.add_error("end", "The end date is before the start date.")
        return data


class TenantCreateForm(forms.Form):
    slug = forms.SlugField(
        label="Slug", max_length=50, help_text="Lowercase letters, digits and inner hyphens; used in URLs."
    )
    name = forms.CharField(label="Name", max_length=200)
    billing_email = forms.EmailField(label="Billing email", required=False)


class TenantStatusForm(forms.Form):
    action = forms.ChoiceField(choices=[("suspend", "Suspend"), ("reactivate", "Reactivate")])


def _limit(label: str, help_text: str = "") -> forms.IntegerField:
    return forms.IntegerField(label=label, required=False, min_value=0, help_text=help_text or "Empty: no limit.")


class LimitsForm(forms.Form):
    """The tenant's limits; an empty field means no limit."""

    requests_per_minute = _limit("Requests per minute")
    tokens_per_minute = _limit("Tokens per minute")
    max_concurrent_requests = _limit("Concurrent requests")
    monthly_token_budget = _limit("Monthly token budget")
    monthly_spend_cap = forms.DecimalField(
        label="Monthly spend cap",
        required=False,
        min_value=0,
        max_digits=14,
        decimal_places=6,
        help_text="Empty: no cap.",
    )
    scheduling_weight = forms.IntegerField(
        label="Scheduling weight", min_value=1, help_text="Share of inference capacity under contention."
    )
    max_prompt_tokens = _limit("Max prompt tokens per request")
    max_output_tokens = _limit("Max output tokens per request")
    max_messages = _limit("Max messages per request")
    max_choices = forms.IntegerField(
        label="Max choices (n) per request",
        min_value=1,
        max_value=128,
        required=False,
        help_text="Empty: the platform's cap.",
    )


USAGE_MAX_DAYS = {"day": 366, "hour": 14}


class UsageFilterForm(forms.Form):
    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label="To (inclusive, UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    bucket = forms.ChoiceField(label="Per", choices=[("day", "Day"), ("hour", "Hour")], initial="day")
    model = forms.ChoiceField(label="Model", required=False)
    key = forms.TypedChoiceField(label="API key", required=False, coerce=int, empty_value=None)
    # Attribution: what the client sent as `user` / `safety_identifier` and `metadata`.
    group = forms.ChoiceField(
        label="Group by",
        required=False,
        choices=[("", "Model and key"), ("user", "End user"), ("tag", "Metadata tag")],
    )
    group_tag = forms.CharField(
        label="Tag to group by", required=False, max_length=METADATA_MAX_KEY, help_text="a metadata key, e.g. team"
    )
    end_user = forms.CharField(label="End user", required=False, max_length=END_USER_MAX)
    tag = forms.CharField(
        label="Tag", required=False, max_length=METADATA_MAX_KEY + 1 + METADATA_MAX_VALUE, help_text="key=value"
    )

    def __init__(self, *args: Any, models: list[str], keys: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_field = self.fields["model"]
        key_field = self.fields["key"]
        assert isinstance(model_field, forms.ChoiceField)
        assert isinstance(key_field, forms.TypedChoiceField)
        model_field.choices = [("", "All models"), *((m, m) for m in models)]
        key_field.choices = [("", "All keys"), *((str(k), label) for k, label in keys)]

    def clean_tag(self) -> tuple[str, str] | None:
        raw = self.cleaned_data.get("tag") or ""
        if not raw:
            return None
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not sep or not name or len(name) > METADATA_MAX_KEY or len(value) > METADATA_MAX_VALUE:
            raise forms.ValidationError(
                f"Write the tag as key=value (a key of 1 to {METADATA_MAX_KEY} characters), e.g. team=search."
            )
        return name, value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("group") == "tag" and not data.get("group_tag"):
            self.add_error("group_tag", "Name the metadata key to group by.")
        start, end, bucket = data.get("start"), data.get("end"), data.get("bucket")
        if start and end:
            if start > end:
                self.add_error("end", "The end date is before the start date.")
            elif bucket in USAGE_MAX_DAYS and (end - start).days + 1 > USAGE_MAX_DAYS[bucket]:
                self.add_error("end", f"Pick at most {USAGE_MAX_DAYS[bucket]} days per {bucket}.")
        return data


class PlanForm(forms.Form):
    plan = forms.TypedChoiceField(label="Plan", coerce=int)

    def __init__(self, *args: Any, plans: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["plan"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [(str(pk), label) for pk, label in plans]
