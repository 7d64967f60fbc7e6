"""Billing routes under /api/v1/."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from billing.api import views

app_name = "billing-api"

urlpatterns: list[URLPattern | URLResolver] = [
    path("tenants/<slug:slug>/invoices/", views.InvoiceListApi.as_view(), name="invoice-list"),
    path("tenants/<slug:slug>/invoices/export.csv", views.InvoiceCsvApi.as_view(), name="invoice-csv"),
    path("tenants/<slug:slug>/invoices/lines.csv", views.InvoiceLineCsvApi.as_view(), name="invoice-lines-csv"),
    path("tenants/<slug:slug>/invoices/<str:invoice>/", views.InvoiceDetailApi.as_view(), name="invoice-detail"),
    path("tenants/<slug:slug>/invoices/<str:invoice>/pdf", views.InvoicePdfApi.as_view(), name="invoice-pdf"),
    path(
        "tenants/<slug:slug>/invoices/<str:invoice>/mark-paid/",
        views.InvoiceMarkPaidApi.as_view(),
        name="invoice-mark-paid",
    ),
    path("tenants/<slug:slug>/usage", views.UsageApi.as_view(), name="usage"),
    path("tenants/<slug:slug>/usage/", views.UsageAliasApi.as_view(), name="usage-slash"),
    path("billing/invoices.csv", views.PlatformInvoiceCsvApi.as_view(), name="platform-invoice-csv"),
    path("billing/invoice-lines.csv", views.PlatformInvoiceLineCsvApi.as_view(), name="platform-invoice-lines-csv"),
    path("billing/stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
]
