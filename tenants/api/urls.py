"""Management API routes, mounted at /api/v1/ (see docs/api.md)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from tenants.api.views import audit, invitations, keys, limits, members, tenants

app_name = "tenants-api"

urlpatterns: list[URLPattern | URLResolver] = [
    path("tenants/", tenants.TenantListCreateApi.as_view(), name="tenant-list"),
    path("tenants/<slug:slug>/", tenants.TenantDetailApi.as_view(), name="tenant-detail"),
    path("tenants/<slug:slug>/suspend/", tenants.TenantSuspendApi.as_view(), name="tenant-suspend"),
    path("tenants/<slug:slug>/reactivate/", tenants.TenantReactivateApi.as_view(), name="tenant-reactivate"),
    path("tenants/<slug:slug>/close/", tenants.TenantCloseApi.as_view(), name="tenant-close"),
    path("tenants/<slug:slug>/members/", members.MemberListApi.as_view(), name="member-list"),
    path("tenants/<slug:slug>/members/<int:member_id>/", members.MemberDetailApi.as_view(), name="member-detail"),
    path("tenants/<slug:slug>/invitations/", invitations.InvitationListCreateApi.as_view(), name="invitation-list"),
    path(
        "tenants/<slug:slug>/invitations/<int:invitation_id>/revoke/",
        invitations.InvitationRevokeApi.as_view(),
        name="invitation-revoke",
    ),
    path("invitations/accept/", invitations.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("tenants/<slug:slug>/keys/", keys.KeyListCreateApi.as_view(), name="key-list"),
    path("tenants/<slug:slug>/keys/<int:key_id>/", keys.KeyDetailApi.as_view(), name="key-detail"),
    path("tenants/<slug:slug>/keys/<int:key_id>/revoke/", keys.KeyRevokeApi.as_view(), name="key-revoke"),
    path("tenants/<slug:slug>/keys/<int:key_id>/rotate/", keys.KeyRotateApi.as_view(), name="key-rotate"),
    path("tenants/<slug:slug>/limits/", limits.LimitsApi.as_view(), name="limits"),
    path("tenants/<slug:slug>/audit-events/", audit.AuditEventListApi.as_view(), name="audit-event-list"),
]
