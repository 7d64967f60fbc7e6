"""Create the benchmark's database: tenants with generous limits (so every check runs but none
binds), each granted the model; KEYS inference keys spread over them; the fixed backend as the
model's node. Writes the raw keys to KEYS_FILE, one a line.

    python -m bench.gateway_overhead.seed BACKEND_URL KEYS_FILE [--keys 10000] [--tenants 100]
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

import django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend")
    parser.add_argument("keys_file")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.gateway_overhead.settings")
    django.setup()
    from django.core.management import call_command

    from core.audit import Actor
    from gateway import services as gw
    from tenants import services as tn
    from tenants.models import APIKey, KeyKind
    from tenants.selectors import token_digest

    call_command("migrate", verbosity=0)
    actor = Actor(label="bench")
    model = gw.model_create(name="demo-llama", actor=actor)
    version = gw.model_version_create(model=model, version="v1", status="active", actor=actor)
    gw.node_register(name="bench-backend", base_url=args.backend, versions=[version], state="up", actor=actor)
    tenants = []
    for i in range(max(1, args.tenants)):
        tenant = tn.tenant_create(slug=f"bench-{i}", name=f"Bench {i}", actor=actor)
        tn.limits_update(
            tenant=tenant, actor=actor, requests_per_minute=10_000_000, tokens_per_minute=1_000_000_000,
            max_concurrent_requests=10_000, monthly_token_budget=10**15,
        )  # fmt: skip
        gw.model_grant_create(tenant=tenant, model=model, actor=actor)
        tenants.append(tenant)
    # Keys in bulk: key_create's audit event per key is not what is measured.
    raws = [f"sk-{secrets.token_urlsafe(32)}" for _ in range(args.keys)]
    APIKey.objects.bulk_create(
        (
            APIKey(
                tenant=tenants[i % len(tenants)], kind=KeyKind.INFERENCE, name=f"bench {i}", prefix="sk-",
                digest=token_digest(raw), last4=raw[-4:], scopes=["inference"],
            )
            for i, raw in enumerate(raws)
        ),
        batch_size=1000,
    )  # fmt: skip
    Path(args.keys_file).write_text("\n".join(raws) + "\n")
    print(f"seeded {len(tenants)} tenants and {len(raws)} keys")


if __name__ == "__main__":
    main()
