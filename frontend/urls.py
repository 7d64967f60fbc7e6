"""Dashboard routes: sign-in pages, tenant pages under /t/<slug>/, platform pages for staff."""

from __future__ import annotations

from django.urls import path

from frontend.views import audit, auth, billing, keys, members, models, observability, platform, tenant, usage

app_name = "frontend"

urlpatterns = [
    path("", tenant.home_view, name="home"),
    path("login/", auth.SignInView.as_view(), name="login"),
    path("logout/", auth.SignOutView.as_view(), name="logout"),
    path("password-reset/", auth.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", auth.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "password-reset/<uidb64>/<token>/",
        auth.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("password-reset/done/", auth.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("invitations/<str:token>/", tenant.invitation_accept_view, name="invitation_accept"),
    # Tenant pages: every view checks its scope from tenants.permissions.
    path("t/<slug:slug>/", tenant.overview_view, name="overview"),
    path("t/<slug:slug>/status/", tenant.overview_status_view, name="overview_status"),
    path("t/<slug:slug>/keys/", keys.key_list_view, name="keys"),
    path("t/<slug:slug>/keys/new/", keys.key_create_view, name="key_create"),
    path("t/<slug:slug>/keys/<int:key_id>/revoke/", keys.key_revoke_view, name="key_revoke"),
    path("t/<slug:slug>/keys/<int:key_id>/rotate/", keys.key_rotate_view, name="key_rotate"),
    path("t/<slug:slug>/members/", members.member_list_view, name="members"),
    path("t/<slug:slug>/members/invite/", members.invitation_create_view, name="invitation_create"),
    path("t/<slug:slug>/members/<int:membership_id>/role/", members.member_role_change_view, name="member_role"),
    path("t/<slug:slug>/members/<int:membership_id>/remove/", members.member_remove_view, name="member_remove"),
    path(
        "t/<slug:slug>/invitations/<int:invitation_id>/revoke/",
        members.invitation_revoke_view,
        name="invitation_revoke",
    ),
    path("t/<slug:slug>/audit/", audit.audit_list_view, name="audit"),
    path("t/<slug:slug>/usage/", usage.usage_view, name="usage"),
    path("t/<slug:slug>/models/", models.model_list_view, name="models"),
    path("t/<slug:slug>/slo/", observability.tenant_slo_view, name="slo"),
    path("t/<slug:slug>/billing/", billing.billing_view, name="billing"),
    path("t/<slug:slug>/billing/invoices.csv", billing.invoices_csv_view, name="billing_invoices_csv"),
    path("t/<slug:slug>/billing/invoice-lines.csv", billing.invoice_lines_csv_view, name="billing_lines_csv"),
    path("t/<slug:slug>/billing/invoices/<int:invoice_id>/", billing.invoice_detail_view, name="invoice_detail"),
    path("t/<slug:slug>/billing/invoices/<int:invoice_id>/pdf/", billing.invoice_pdf_view, name="invoice_pdf"),
    # Platform pages (staff only).
    path("platform/", platform.tenant_list_view, name="platform_tenants"),
    path("platform/tenants/new/", platform.tenant_create_view, name="platform_tenant_create"),
    path("platform/tenants/<slug:slug>/", platform.tenant_detail_view, name="platform_tenant"),
    path("platform/tenants/<slug:slug>/status/", platform.tenant_status_view, name="platform_tenant_status"),
    path("platform/tenants/<slug:slug>/limits/", platform.tenant_limits_view, name="platform_tenant_limits"),
    path("platform/tenants/<slug:slug>/plan/", platform.tenant_plan_view, name="platform_tenant_plan"),
    path("platform/nodes/", platform.node_list_view, name="platform_nodes"),
    path("platform/slo/", observability.platform_slo_view, name="platform_slo"),
    path("platform/cost/", observability.platform_cost_view, name="platform_cost"),
    path("platform/cost.csv", observability.platform_cost_csv_view, name="platform_cost_csv"),
    path("platform/models/", models.platform_model_list_view, name="platform_models"),
    path("platform/models/<path:name>/traffic/", models.model_traffic_view, name="platform_model_traffic"),
]
