"""Reads of the model and node registry."""

from __future__ import annotations

from django.db.models import QuerySet

from core.errors import NotFound
from gateway.models import InferenceNode, Model, ModelGrant, ModelVersion, NodeState
from tenants.models import Tenant


def model_list() -> QuerySet[Model]:
    return Model.objects.prefetch_related("versions").order_by("name")


def model_get(name: str) -> Model:
    model = Model.objects.filter(name=name).first()
    if model is None:
        raise NotFound("No such model.")
    return model


def model_version_get(model: Model, version: str) -> ModelVersion:
    row = ModelVersion.objects.select_related("model").filter(model=model, version=version).first()
    if row is None:
        raise NotFound("No such model version.")
    return row


def model_versions_by_label(labels: list[str]) -> list[ModelVersion]:
    """Versions named "<model>@<version>"; raises NotFound naming the first unknown one."""
    found: list[ModelVersion] = []
    for label in labels:
        name, _, version = label.rpartition("@")
        row = ModelVersion.objects.select_related("model").filter(model__name=name, version=version).first()
        if row is None:
            raise NotFound(f"No model version {label!r}.")
        found.append(row)
    return found


def model_list_for_tenant(*, tenant: Tenant) -> QuerySet[Model]:
    """Models the tenant may use (through its plan or a grant)."""
    granted = ModelGrant.objects.filter(tenant=tenant).values("model_id")
    return Model.objects.filter(id__in=granted).prefetch_related("versions").order_by("name")


def node_list() -> QuerySet[InferenceNode]:
    """Every registered node, whatever its state (billing pulls all their journals)."""
    return InferenceNode.objects.prefetch_related("versions__model").order_by("name")


def node_get(name: str) -> InferenceNode:
    node = InferenceNode.objects.prefetch_related("versions__model").filter(name=name).first()
    if node is None:
        raise NotFound("No such node.")
    return node


def node_ready_exists() -> bool:
    return InferenceNode.objects.filter(state=NodeState.UP).exists()
