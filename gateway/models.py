"""The model registry (models, versions, traffic split, grants) and the inference node registry.

The gateway never reads these rows on a request: `gateway.registry` keeps a snapshot per
process and refreshes it in the background.
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from tenants.models import Tenant

MODEL_NAME_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$",
    "A model name is 1-100 characters: letters, digits and . _ : - (not first).",
)
VERSION_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "A version is 1-64 characters: letters, digits and . _ - (not first).",
)


class Model(models.Model):
    """A model as tenants see it: the public name they pass as `model`."""

    name = models.CharField(max_length=100, unique=True, validators=[MODEL_NAME_VALIDATOR])
    description = models.TextField(blank=True)
    owned_by = models.CharField(max_length=100, default="mm-orch")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersionStatus(models.TextChoices):
    DRAFT = "draft"
    ACTIVE = "active"
    RETIRED = "retired"


class ModelVersion(models.Model):
    """One deployable build of a model. Only active versions with weight > 0 take traffic."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=64, validators=[VERSION_VALIDATOR])
    engine = models.CharField(max_length=32, default="torch")
    artifact_uri = models.CharField(max_length=500, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ModelVersionStatus.choices, default=ModelVersionStatus.DRAFT)
    # Relative share of the model's traffic among its active versions (canaries, A/B).
    traffic_weight = models.PositiveIntegerField(default=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model__name", "version"]
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="modelversion_unique_version")]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """What nodes and the usage journal call this version."""
        return f"{self.model.name}@{self.version}"


class GrantSource(models.TextChoices):
    PLAN = "plan"
    GRANT = "grant"


class ModelGrant(models.Model):
    """A tenant may use a model: through its plan, or by an explicit grant from staff."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="model_grants")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="grants")
    source = models.CharField(max_length=8, choices=GrantSource.choices, default=GrantSource.GRANT)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tenant_id", "model__name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "model", "source"], name="modelgrant_unique_source"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}:{self.model_id}:{self.source}"


class NodeState(models.TextChoices):
    UP = "up"
    DOWN = "down"
    # Taking no new requests (maintenance); the probe leaves it alone.
    DRAINING = "draining"


class InferenceNode(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[VERSION_VALIDATOR])
    base_url = models.URLField(max_length=300)
    versions = models.ManyToManyField(ModelVersion, related_name="nodes", blank=True)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.DOWN)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
