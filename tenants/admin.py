"""Django admin for platform staff. Changes go through the services, so rules and audit hold."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import InlineModelAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from core.audit import Actor, actor_for
from core.errors import ServiceError
from tenants import services
from tenants.audit import audit_record
from tenants.models import APIKey, AuditEvent, Invitation, Membership, Tenant, TenantLimits, User
from tenants.permissions import Role
from tenants.selectors import LIMIT_FIELDS, TENANT_ONLY_LIMIT_FIELDS


def _actor(request: HttpRequest) -> Actor:
    user = request.user
    return actor_for(request, user_id=user.pk, label=getattr(user, "email", "staff"))


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TenantLimitsInline(admin.StackedInline):  # type: ignore[type-arg]
    model = TenantLimits
    can_delete = False
    readonly_fields = [*LIMIT_FIELDS, *TENANT_ONLY_LIMIT_FIELDS, "updated_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["slug", "name", "status", "created_at", "status_changed_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name", "billing_email"]
    readonly_fields = ["status", "status_changed_at", "created_at"]
    actions = ["suspend", "reactivate", "close"]

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> list[str]:
        return [*self.readonly_fields, "slug"] if obj is not None else list(self.readonly_fields)

    def get_inlines(self, request: HttpRequest, obj: Tenant | None) -> list[type[InlineModelAdmin[Any, Any]]]:
        return [TenantLimitsInline] if obj is not None else []  # the service makes the limits row

    def save_model(self, request: HttpRequest, obj: Tenant, form: ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        if change:
            super().save_model(request, obj, form, change)  # name and billing email only
            audit_record(
                actor=_actor(request),
                tenant=obj,
                action="tenant.update",
                target_type="tenant",
                target_id=obj.pk,
                after={"name": obj.name, "billing_email": obj.billing_email},
            )
            return
        created = services.tenant_create(
            slug=obj.slug, name=obj.name, billing_email=obj.billing_email, actor=_actor(request)
        )
        obj.pk = created.pk
        obj.status = created.status

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    def _transition(self, request: HttpRequest, queryset: QuerySet[Tenant], action: Any, verb: str) -> None:
        done = 0
        for tenant in queryset:
            try:
                action(tenant=tenant, actor=_actor(request))
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"{tenant.slug}: {exc.message}", messages.ERROR)
        self.message_user(request, f"{verb} {done} tenant(s).", messages.SUCCESS)

    @admin.action(description="Suspend (keys stop working at once)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._transition(request, queryset, services.tenant_suspend, "Suspended")

    @admin.action(description="Reactivate")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._transition(request, queryset, services.tenant_reactivate, "Reactivated")

    @admin.action(description="Close for good")
    def close(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._transition(request, queryset, services.tenant_close, "Closed")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # tenants are closed, never deleted: invoices and audit refer to them


class UserCreationForm(BaseUserCreationForm):  # type: ignore[type-arg]
    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self) -> str:
        # Emails are stored lowercase everywhere (sign-in and invitations match on them).
        email = str(self.cleaned_data["email"]).strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("A user with this email exists.")
        return email


class UserEditForm(UserChangeForm):  # type: ignore[type-arg]
    class Meta:
        model = User
        fields = "__all__"


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    fk_name = "user"
    extra = 0
    fields = ["tenant", "role", "created_at"]
    readonly_fields = ["tenant", "role", "created_at"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):  # type: ignore[type-arg]
    form = UserEditForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "full_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active"]
    search_fields = ["email", "full_name"]
    readonly_fields = ["date_joined", "last_login"]

    def get_inlines(self, request: HttpRequest, obj: User | None) -> list[type[InlineModelAdmin[Any, Any]]]:
        return [MembershipInline] if obj is not None else []

    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name",)}),
        ("Platform", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__email", "tenant__slug"]
    raw_id_fields = ["user", "tenant"]
    list_select_related = ["user", "tenant"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return ["user", "tenant", "created_at"] if obj is not None else ["created_at"]

    def save_model(self, request: HttpRequest, obj: Membership, form: ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        try:
            if change:
                services.membership_role_change(membership=obj, role=obj.role, actor=_actor(request))
            else:
                created = services.membership_create(
                    tenant=obj.tenant, user=obj.user, role=Role(obj.role), actor=_actor(request)
                )
                obj.pk = created.pk
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        try:
            services.membership_remove(membership=obj, actor=_actor(request))
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset:
            self.delete_model(request, membership)


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["email", "tenant", "role", "status", "created_at", "expires_at"]
    list_filter = ["status", "role"]
    search_fields = ["email", "tenant__slug"]
    exclude = ["token_digest"]


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Keys are created where the plaintext can be shown once (API, dashboard); here staff
    read them, rename them and revoke them. The digest is never shown."""

    list_display = ["masked", "name", "tenant", "kind", "created_by", "created_at", "expires_at", "revoked_at"]
    list_filter = ["kind", "tenant"]
    search_fields = ["name", "last4", "tenant__slug", "created_by__email"]
    list_select_related = ["tenant", "created_by"]
    exclude = ["digest"]
    readonly_fields = [
        "tenant",
        "kind",
        "prefix",
        "last4",
        "scopes",
        "allowed_models",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "replaced_by",
        *LIMIT_FIELDS,
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: APIKey, form: ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        services.key_update(key=obj, name=obj.name, actor=_actor(request))

    @admin.action(description="Revoke (stops working within a second)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        for key in queryset:
            services.key_revoke(key=key, actor=_actor(request))
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


@admin.register(TenantLimits)
class TenantLimitsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["tenant", "requests_per_minute", "tokens_per_minute", "monthly_spend_cap", "scheduling_weight"]
    readonly_fields = ["tenant", "updated_at"]
    list_select_related = ["tenant"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # every tenant gets its row when it is created

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: TenantLimits, form: ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        fields = {name: getattr(obj, name) for name in form.changed_data}
        try:
            services.limits_update(tenant=obj.tenant, actor=_actor(request), **fields)
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "action", "actor_label", "target_type", "target_id", "ip"]
    list_filter = ["action", "tenant"]
    search_fields = ["actor_label", "action", "target_id", "request_id"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
