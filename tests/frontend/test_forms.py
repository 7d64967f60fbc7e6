"""Bad form input: a clear message on the form, a 4xx status, and nothing saved."""

from __future__ import annotations

from tenants.models import APIKey, AuditEvent, Invitation, Membership, Tenant, TenantLimits
from tenants.permissions import Role
from tests.frontend.conftest import World, client_for


def _unchanged(world: World) -> tuple[int, int, int, int]:
    return (APIKey.objects.count(), Invitation.objects.count(), Tenant.objects.count(), AuditEvent.objects.count())


def test_key_form_errors(world: World) -> None:
    client = client_for(world.users[Role.DEVELOPER])
    before = _unchanged(world)
    cases = [
        ({"name": "", "kind": "inference"}, "This field is required."),
        ({"name": "x", "kind": "wizard"}, "Select a valid choice. wizard is not one of the available choices."),
        # A developer does not hold billing:read, so it is not even offered.
        ({"name": "x", "kind": "admin", "scopes": ["billing:read"]}, "Select a valid choice. billing:read"),
        ({"name": "x", "kind": "inference", "scopes": ["keys:read"]}, "Inference keys carry only inference"),
        ({"name": "x", "kind": "inference", "expires_on": "2001-01-01"}, "Pick a date after today."),
        ({"name": "x", "kind": "inference", "expires_on": "soon"}, "Enter a valid date."),
        ({"name": "x", "kind": "inference", "allowed_models": ["gpt-9"]}, "Select a valid choice. gpt-9"),
        ({"name": "x" * 101, "kind": "inference"}, "at most 100 characters"),
    ]
    for data, message in cases:
        response = client.post("/t/acme/keys/new/", data)
        assert response.status_code == 400, data
        assert message in response.content.decode(), (data, message)
        assert 'aria-invalid="true"' in response.content.decode() or "notice error" in response.content.decode()
    assert _unchanged(world) == before


def test_invite_form_errors(world: World) -> None:
    admin = client_for(world.users[Role.ADMIN])
    before = _unchanged(world)
    bad_email = admin.post("/t/acme/members/invite/", {"email": "not-an-email", "role": "viewer"})
    assert bad_email.status_code == 400 and "Enter a valid email address." in bad_email.content.decode()
    bad_role = admin.post("/t/acme/members/invite/", {"email": "a@example.com", "role": "emperor"})
    assert bad_role.status_code == 400 and "Select a valid choice." in bad_role.content.decode()
    # Owner rules: an admin cannot invite an owner.
    owner_invite = admin.post("/t/acme/members/invite/", {"email": "boss@example.com", "role": "owner"})
    assert owner_invite.status_code == 403 and "Only owners manage owners." in owner_invite.content.decode()
    member = admin.post("/t/acme/members/invite/", {"email": world.users[Role.VIEWER].email, "role": "viewer"})
    assert member.status_code == 409 and "is already a member" in member.content.decode()
    assert _unchanged(world) == before


def test_owner_rules_on_role_changes_and_removal(world: World) -> None:
    owner_membership = Membership.objects.get(tenant=world.acme, user=world.users[Role.OWNER])
    admin = client_for(world.users[Role.ADMIN])
    page = admin.get("/t/acme/members/").content.decode()
    # The page does not offer an admin what the owner rules refuse.
    assert '<option value="owner"' not in page and "owners manage owners" in page
    assert '<option value="owner"' in client_for(world.users[Role.OWNER]).get("/t/acme/members/").content.decode()
    response = admin.post(f"/t/acme/members/{owner_membership.pk}/role/", {"role": "viewer"}, follow=True)
    assert "Only owners manage owners." in response.content.decode()
    owner = client_for(world.users[Role.OWNER])
    response = owner.post(f"/t/acme/members/{owner_membership.pk}/role/", {"role": "admin"}, follow=True)
    assert "The last owner cannot be demoted" in response.content.decode()
    response = owner.post(f"/t/acme/members/{owner_membership.pk}/remove/", follow=True)
    assert "The last owner cannot be removed." in response.content.decode()
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER
    viewer = Membership.objects.get(tenant=world.acme, user=world.users[Role.VIEWER])
    bad = owner.post(f"/t/acme/members/{viewer.pk}/role/", {"role": "god"}, follow=True)
    assert "Choose one of the listed roles." in bad.content.decode()
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER
    # A valid change goes through and is audited.
    owner.post(f"/t/acme/members/{viewer.pk}/role/", {"role": "finance"})
    viewer.refresh_from_db()
    assert viewer.role == Role.FINANCE
    assert AuditEvent.objects.filter(action="membership.role_change", target_id=str(viewer.pk)).exists()


def test_platform_form_errors(world: World) -> None:
    staff = client_for(world.staff)
    before = _unchanged(world)
    bad_slug = staff.post("/platform/tenants/new/", {"slug": "Bad Slug!", "name": "X"})
    assert bad_slug.status_code == 400 and "Enter a valid" in bad_slug.content.decode()
    taken = staff.post("/platform/tenants/new/", {"slug": "acme", "name": "Again"})
    assert taken.status_code == 409 and "is taken" in taken.content.decode()
    limits_before = list(TenantLimits.objects.filter(tenant=world.acme).values())
    negative = staff.post("/platform/tenants/acme/limits/", {"scheduling_weight": "1", "requests_per_minute": "-5"})
    assert negative.status_code == 400
    assert "Ensure this value is greater than or equal to 0." in negative.content.decode()
    zero_weight = staff.post("/platform/tenants/acme/limits/", {"scheduling_weight": "0"})
    assert zero_weight.status_code == 400
    spend = staff.post("/platform/tenants/acme/limits/", {"scheduling_weight": "1", "monthly_spend_cap": "1.1234567"})
    assert spend.status_code == 400 and "decimal places" in spend.content.decode()
    assert list(TenantLimits.objects.filter(tenant=world.acme).values()) == limits_before
    bad_plan = staff.post("/platform/tenants/acme/plan/", {"plan": "999999"})
    assert bad_plan.status_code == 400 and "Select a valid choice." in bad_plan.content.decode()
    bad_traffic = staff.post("/platform/models/demo-llama/traffic/", {"weight-v1": "-3"}, follow=True)
    assert "must be a whole number" in bad_traffic.content.decode()
    assert _unchanged(world) == before


def test_platform_changes_go_through_services(world: World) -> None:
    staff = client_for(world.staff)
    created = staff.post("/platform/tenants/new/", {"slug": "initech", "name": "Initech", "billing_email": ""})
    assert created.status_code == 302
    assert Tenant.objects.filter(slug="initech").exists()
    staff.post("/platform/tenants/initech/status/", {"action": "suspend"})
    assert Tenant.objects.get(slug="initech").status == "suspended"
    staff.post("/platform/tenants/initech/status/", {"action": "reactivate"})
    assert Tenant.objects.get(slug="initech").status == "active"
    staff.post("/platform/tenants/initech/limits/", {"scheduling_weight": "3", "monthly_token_budget": "1000"})
    limits = TenantLimits.objects.get(tenant__slug="initech")
    assert (limits.scheduling_weight, limits.monthly_token_budget) == (3, 1000)
    assert AuditEvent.objects.filter(tenant__slug="initech", action="limits.update", actor_user=world.staff).exists()
    assert world.plan is not None
    moved = staff.post("/platform/tenants/initech/plan/", {"plan": str(world.plan.pk)}, follow=True)
    assert "initech is now on the Starter plan." in moved.content.decode()
    from billing.selectors import tenant_plan_get

    assert tenant_plan_get(Tenant.objects.get(slug="initech")).plan == world.plan


def test_filter_errors_on_usage_and_audit(world: World) -> None:
    client = client_for(world.users[Role.OWNER])
    backwards = client.get("/t/acme/usage/", {"start": "2026-05-10", "end": "2026-05-01"})
    assert backwards.status_code == 400 and "The end date is before the start date." in backwards.content.decode()
    too_long = client.get("/t/acme/usage/", {"start": "2026-01-01", "end": "2026-03-01", "bucket": "hour"})
    assert too_long.status_code == 400 and "at most 14 days per hour" in too_long.content.decode()
    bad_date = client.get("/t/acme/audit/", {"start": "yesterday"})
    assert bad_date.status_code == 400 and "Enter a valid date." in bad_date.content.decode()
