"""Django admin for platform staff: plans, prices, subscriptions, invoices (mark paid), the ledger."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from billing.models import (
    BillingRun,
    IngestCursor,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    Plan,
    Price,
    Subscription,
    UsageAlert,
    UsageRecord,
)
from billing.services.invoices import credit_note_create, invoice_mark_paid, invoice_void
from billing.services.plans import price_set, subscription_create
from core.audit import Actor, actor_for
from core.errors import ServiceError
from tenants.admin import ReadOnlyAdmin
from tenants.audit import audit_record


def _actor(request: HttpRequest) -> Actor:
    user = request.user
    return actor_for(request, user_id=user.pk, label=getattr(user, "email", "staff"))


class PriceInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Price
    extra = 0
    readonly_fields = ("model_name", "input_per_1m", "output_per_1m", "effective_from")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # prices change through price_set (never backwards)


SLO_FIELDS = ("slo_availability", "slo_ttft_p95_ms", "slo_itl_p95_ms")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "name",
        "currency",
        "base_fee",
        "included_tokens",
        "slo_availability",
        "slo_ttft_p95_ms",
        "slo_itl_p95_ms",
        "is_active",
    )
    fieldsets = (
        (None, {"fields": ("name", "currency", "base_fee", "included_tokens", "default_limits", "is_active")}),
        ("Service-level objectives", {"fields": SLO_FIELDS}),
    )
    inlines = [PriceInline]

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changed = [name for name in SLO_FIELDS if name in form.changed_data]
        if change and changed:  # the same event plan_slo_set writes
            audit_record(
                actor=_actor(request),
                tenant=None,
                action="plan.slo_set",
                target_type="plan",
                target_id=obj.pk,
                before={name: form.initial.get(name) for name in changed},
                after={name: getattr(obj, name) for name in changed},
            )


class _ServiceForm(forms.ModelForm):  # type: ignore[type-arg]
    """Runs the service once the form is valid, so refusals show on the form and nothing is
    half-written; the admin's own save then only records what the service made."""

    service_result: Any = None
    request_actor: Actor = Actor(label="admin")

    def _run(self) -> Any:
        raise NotImplementedError

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        try:
            with transaction.atomic():
                self.service_result = self._run()
        except ServiceError as exc:
            self.add_error(None, exc.message)

    def save(self, commit: bool = True) -> Any:
        self.save_m2m = lambda: None  # type: ignore[method-assign]
        return self.service_result


class PriceForm(_ServiceForm):
    class Meta:
        model = Price
        fields = ("plan", "model_name", "input_per_1m", "output_per_1m", "effective_from")

    def _run(self) -> Price:
        data = self.cleaned_data
        return price_set(
            plan=data["plan"],
            model_name=data["model_name"],
            input_per_1m=data["input_per_1m"],
            output_per_1m=data["output_per_1m"],
            effective_from=data["effective_from"],
            actor=self.request_actor,
        )


class SubscriptionForm(_ServiceForm):
    class Meta:
        model = Subscription
        fields = ("tenant", "plan", "starts_at")

    def _run(self) -> Subscription:
        data = self.cleaned_data
        return subscription_create(
            tenant=data["tenant"], plan=data["plan"], starts_at=data["starts_at"], actor=self.request_actor
        )


class _AddThroughServiceAdmin(ReadOnlyAdmin):
    """Rows are added through the billing services (validation, audit), never edited."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.request_actor = _actor(request)  # type: ignore[attr-defined]
        return form

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if form.service_result is not None:
            obj.pk = form.service_result.pk  # already written by the service


@admin.register(Price)
class PriceAdmin(_AddThroughServiceAdmin):
    form = PriceForm
    list_display = ("plan", "model_name", "input_per_1m", "output_per_1m", "effective_from")
    list_filter = ("plan",)


@admin.register(Subscription)
class SubscriptionAdmin(_AddThroughServiceAdmin):
    form = SubscriptionForm
    list_display = ("tenant", "plan", "starts_at", "ends_at")


class InvoiceLineInline(admin.TabularInline):  # type: ignore[type-arg]
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = (
        "position",
        "line_type",
        "description",
        "model_name",
        "model_version",
        "token_kind",
        "units",
        "unit_price_per_1m",
        "amount_minor",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CreditNoteForm(forms.Form):
    amount = forms.DecimalField(max_digits=18, decimal_places=6, help_text="In the invoice's currency.")
    reason = forms.CharField(max_length=300, help_text="Shown on the credit note.")


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "tenant", "kind", "status", "currency", "total_minor", "period_start", "issued_at")
    list_filter = ("status", "kind")
    search_fields = ("number", "tenant__slug")
    inlines = [InvoiceLineInline]
    actions = ["mark_paid", "mark_void"]
    readonly_fields = ("credit_note",)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)

    def get_urls(self) -> list[URLPattern]:
        credit = path(
            "<int:invoice_id>/credit-note/",
            self.admin_site.admin_view(self.credit_note_view),
            name="billing_invoice_credit_note",
        )
        return [credit, *super().get_urls()]

    @admin.display(description="Credit note")
    def credit_note(self, invoice: Invoice) -> str:
        if invoice.pk is None or invoice.kind != InvoiceKind.INVOICE:
            return "-"
        url = reverse("admin:billing_invoice_credit_note", args=[invoice.pk])
        return format_html('<a href="{}">Issue a credit note</a>', url)

    def credit_note_view(self, request: HttpRequest, invoice_id: int) -> HttpResponse:
        """Finance corrects an issued invoice: `credit_note_create` checks the amount and state."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        invoice = Invoice.objects.select_related("tenant").filter(pk=invoice_id).first()
        if invoice is None:
            raise Http404("No such invoice.")
        form = CreditNoteForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                note = credit_note_create(
                    invoice=invoice,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    actor=_actor(request),
                )
            except ServiceError as exc:
                form.add_error("amount" if exc.param == "amount" else None, exc.message)
            else:
                self.message_user(request, f"Credit note {note.number} issued for {invoice.number}.")
                return redirect("admin:billing_invoice_change", note.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Credit note for {invoice.number}",
            "opts": self.model._meta,
            "original": invoice,
            "form": form,
        }
        return TemplateResponse(request, "admin/billing/invoice/credit_note.html", context)

    @admin.action(description="Mark selected invoices paid")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        done = 0
        for invoice in queryset.filter(status__in=[InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE]):
            try:
                invoice_mark_paid(invoice=invoice, actor=_actor(request))
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"{invoice}: {exc.message}", messages.ERROR)
        self.message_user(request, f"{done} invoice(s) marked paid.")

    @admin.action(description="Void selected invoices")
    def mark_void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            try:
                invoice_void(invoice=invoice, actor=_actor(request))
            except ServiceError as exc:
                self.message_user(request, f"{invoice}: {exc.message}", messages.ERROR)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "request_id",
        "tenant",
        "model_name",
        "prompt_tokens",
        "completion_tokens",
        "outcome",
        "cost",
        "started_at",
    )
    list_filter = ("outcome",)
    search_fields = ("request_id", "client_request_id")


@admin.register(IngestCursor)
class IngestCursorAdmin(ReadOnlyAdmin):
    list_display = ("node_name", "after_seq", "records_total", "updated_at", "last_error")


@admin.register(BillingRun)
class BillingRunAdmin(ReadOnlyAdmin):
    list_display = ("period", "outcome", "issued", "skipped", "failed", "started_at", "finished_at")
    list_filter = ("outcome",)


@admin.register(UsageAlert)
class UsageAlertAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "period", "kind", "threshold", "sent_at")
