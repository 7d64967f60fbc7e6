"""Register a model version served by a node, and grant it to tenants (idempotent).

    python manage.py gateway_register --model demo-llama --model-version v1 \\
        --node node-1 --url http://127.0.0.1:8100 --grant acme --grant globex [--state up]

Set-up scripts (`make demo`) and operators use it; it goes through the gateway's services, so
every change is audited.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from core.audit import Actor
from core.errors import ServiceError
from gateway import services
from gateway.models import InferenceNode, Model, ModelVersion, ModelVersionStatus, NodeState
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Register a model version on an inference node and grant the model to tenants."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="public model name, e.g. demo-llama")
        parser.add_argument("--model-version", required=True, help="version served by the node, e.g. v1")
        parser.add_argument("--node", required=True, help="node name")
        parser.add_argument("--url", required=True, help="node base URL, e.g. http://127.0.0.1:8100")
        parser.add_argument("--grant", action="append", default=[], help="tenant slug to grant the model to")
        parser.add_argument("--state", default=None, choices=NodeState.values,
                            help="default: unchanged; down for a new node (the probe corrects it)")  # fmt: skip
        parser.add_argument("--engine", default="torch")
        parser.add_argument("--artifact", default="", help="artifact location")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor(label="manage.py gateway_register")
        try:
            model = Model.objects.filter(name=options["model"]).first() or services.model_create(
                name=options["model"], actor=actor
            )
            version = ModelVersion.objects.filter(model=model, version=options["model_version"]).first()
            if version is None:
                version = services.model_version_create(
                    model=model, version=options["model_version"], engine=options["engine"],
                    artifact_uri=options["artifact"], status=ModelVersionStatus.ACTIVE, actor=actor,
                )  # fmt: skip
            elif version.status != ModelVersionStatus.ACTIVE:
                version = services.model_version_update(version=version, status=ModelVersionStatus.ACTIVE, actor=actor)
            # Keep whatever else the node serves (other models, other versions).
            existing = list(ModelVersion.objects.filter(nodes__name=options["node"]))
            served = list({v.pk: v for v in [*existing, version]}.values())
            node = InferenceNode.objects.filter(name=options["node"]).first()
            state = options["state"] or (node.state if node is not None else NodeState.DOWN)
            services.node_register(
                name=options["node"], base_url=options["url"], versions=served, state=state, actor=actor
            )
            for slug in options["grant"]:
                tenant = Tenant.objects.filter(slug=slug).first()
                if tenant is None:
                    raise CommandError(f"No tenant {slug!r}.")
                services.model_grant_create(tenant=tenant, model=model, actor=actor)
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{model.name}@{version.version} on {options['node']} ({options['url']})")
