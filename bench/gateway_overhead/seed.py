"""Create the benchmark's database: a tenant with generous limits (so every check runs but none
binds), an inference key, the model and the fixed backend as its node. Prints the key."""

from __future__ import annotations

import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.gateway_overhead.settings")
    django.setup()
    from django.core.management import call_command

    from core.audit import Actor
    from gateway import services as gw
    from tenants import services as tn

    call_command("migrate", verbosity=0)
    actor = Actor(label="bench")
    tenant = tn.tenant_create(slug="bench", name="Bench", actor=actor)
    tn.limits_update(
        tenant=tenant, actor=actor, requests_per_minute=10_000_000, tokens_per_minute=1_000_000_000,
        max_concurrent_requests=10_000, monthly_token_budget=10**15,
    )  # fmt: skip
    _, raw = tn.key_create(
        tenant=tenant, created_by=None, name="bench", actor=actor, scopes=["inference"],
        grantable_scopes=frozenset({"inference"}),
    )  # fmt: skip
    model = gw.model_create(name="demo-llama", actor=actor)
    version = gw.model_version_create(model=model, version="v1", status="active", actor=actor)
    gw.model_grant_create(tenant=tenant, model=model, actor=actor)
    gw.node_register(name="bench-backend", base_url=sys.argv[1], versions=[version], state="up", actor=actor)
    print(raw)


if __name__ == "__main__":
    main()
