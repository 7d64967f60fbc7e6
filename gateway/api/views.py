"""Management API of the registry: tenants read the models they may use; staff manage models,
versions, traffic splits, grants and inference nodes."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import StrictCharField, StrictIntegerField, StrictSerializer, page_serializer
from core.api.views import StaffAPIView
from gateway import selectors, services
from gateway.models import GrantSource, InferenceNode, Model, ModelVersionStatus, NodeState
from tenants.api.base import TenantScopedAPIView
from tenants.selectors import tenant_get_by_slug


class VersionOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    version = serializers.CharField()
    engine = serializers.CharField()
    artifact_uri = serializers.CharField()
    parameters = serializers.JSONField()
    status = serializers.CharField()
    traffic_weight = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class ModelOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField()
    description = serializers.CharField()
    owned_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    versions = VersionOutputSerializer(many=True, source="versions.all")


class TenantModelOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What a tenant sees: the model and its active versions with their traffic share."""

    name = serializers.CharField()
    description = serializers.CharField()
    owned_by = serializers.CharField()
    versions = serializers.SerializerMethodField()

    def get_versions(self, model: Model) -> list[dict[str, Any]]:
        return [
            {"version": v.version, "traffic_weight": v.traffic_weight}
            for v in model.versions.all()
            if v.status == ModelVersionStatus.ACTIVE
        ]


class NodeOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField()
    base_url = serializers.CharField()
    state = serializers.CharField()
    versions = serializers.SerializerMethodField()
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    state_changed_at = serializers.DateTimeField()

    def get_versions(self, node: InferenceNode) -> list[str]:
        return sorted(v.label for v in node.versions.all())


# --- tenants ------------------------------------------------------------------------------------
class TenantModelListApi(TenantScopedAPIView):
    required_scopes = {"GET": "models:read"}

    @extend_schema(
        operation_id="tenant_models_list", responses=page_serializer("TenantModelPage", TenantModelOutputSerializer)
    )
    def get(self, request: Request, slug: str) -> Response:
        models = selectors.model_list_for_tenant(tenant=self.tenant)
        return self.paginated(request, models, TenantModelOutputSerializer)


# --- staff: models ------------------------------------------------------------------------------
class ModelListCreateApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelCreateInput")
    class InputSerializer(StrictSerializer):
        name = StrictCharField(max_length=100)
        description = StrictCharField(required=False, allow_blank=True, default="")
        owned_by = StrictCharField(required=False, max_length=100, default="mm-orch")

    @extend_schema(operation_id="models_list", responses=page_serializer("ModelPage", ModelOutputSerializer))
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.model_list(), ModelOutputSerializer)

    @extend_schema(operation_id="models_create", request=InputSerializer, responses={201: ModelOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_create(actor=self.actor, **data.validated_data)
        return Response(ModelOutputSerializer(model).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelUpdateInput")
    class InputSerializer(StrictSerializer):
        description = StrictCharField(required=False, allow_blank=True)
        owned_by = StrictCharField(required=False, max_length=100)

    @extend_schema(operation_id="models_retrieve", responses=ModelOutputSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(ModelOutputSerializer(selectors.model_get(name)).data)

    @extend_schema(operation_id="models_update", request=InputSerializer, responses=ModelOutputSerializer)
    def patch(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        model = services.model_update(model=selectors.model_get(name), actor=self.actor, **data.validated_data)
        return Response(ModelOutputSerializer(model).data)

    @extend_schema(operation_id="models_delete", responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        services.model_delete(model=selectors.model_get(name), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionCreateApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelVersionCreateInput")
    class InputSerializer(StrictSerializer):
        version = StrictCharField(max_length=64)
        engine = StrictCharField(required=False, max_length=32, default="torch")
        artifact_uri = StrictCharField(required=False, allow_blank=True, max_length=500, default="")
        parameters = serializers.DictField(required=False, default=dict)
        status = serializers.ChoiceField(choices=ModelVersionStatus.values, required=False, default="draft")
        traffic_weight = StrictIntegerField(required=False, min_value=0, max_value=1_000_000, default=100)

    @extend_schema(
        operation_id="model_versions_create", request=InputSerializer, responses={201: VersionOutputSerializer}
    )
    def post(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.model_version_create(
            model=selectors.model_get(name), actor=self.actor, **data.validated_data
        )
        return Response(VersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class ModelVersionDetailApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelVersionUpdateInput")
    class InputSerializer(StrictSerializer):
        engine = StrictCharField(required=False, max_length=32)
        artifact_uri = StrictCharField(required=False, allow_blank=True, max_length=500)
        parameters = serializers.DictField(required=False)
        status = serializers.ChoiceField(choices=ModelVersionStatus.values, required=False)
        traffic_weight = StrictIntegerField(required=False, min_value=0, max_value=1_000_000)

    @extend_schema(operation_id="model_versions_update", request=InputSerializer, responses=VersionOutputSerializer)
    def patch(self, request: Request, name: str, version: str) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        row = selectors.model_version_get(selectors.model_get(name), version)
        row = services.model_version_update(version=row, actor=self.actor, **data.validated_data)
        return Response(VersionOutputSerializer(row).data)


class ModelTrafficApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelTrafficInput")
    class InputSerializer(StrictSerializer):
        weights = serializers.DictField(child=StrictIntegerField(min_value=0, max_value=1_000_000), allow_empty=False)

    @extend_schema(operation_id="model_traffic_set", request=InputSerializer, responses=ModelOutputSerializer)
    def put(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = selectors.model_get(name)
        services.model_traffic_set(model=model, weights=data.validated_data["weights"], actor=self.actor)
        return Response(ModelOutputSerializer(selectors.model_get(name)).data)


class ModelGrantCreateApi(StaffAPIView):
    @extend_schema_serializer(component_name="ModelGrantCreateInput")
    class InputSerializer(StrictSerializer):
        tenant = StrictCharField(max_length=50)
        source = serializers.ChoiceField(choices=GrantSource.values, required=False, default="grant")  # type: ignore[assignment]

    @extend_schema_serializer(component_name="ModelGrant")
    class OutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
        tenant = serializers.CharField(source="tenant.slug")
        model = serializers.CharField(source="model.name")
        source = serializers.CharField()  # type: ignore[assignment]
        created_at = serializers.DateTimeField()

    @extend_schema(operation_id="model_grants_create", request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = tenant_get_by_slug(data.validated_data["tenant"])
        grant = services.model_grant_create(
            tenant=tenant, model=selectors.model_get(name), actor=self.actor, source=data.validated_data["source"]
        )
        return Response(self.OutputSerializer(grant).data, status=status.HTTP_201_CREATED)


class ModelGrantDeleteApi(StaffAPIView):
    @extend_schema(operation_id="model_grants_delete", responses={204: None})
    def delete(self, request: Request, name: str, slug: str) -> Response:
        source = request.query_params.get("source", GrantSource.GRANT)
        services.model_grant_delete(
            tenant=tenant_get_by_slug(slug), model=selectors.model_get(name), actor=self.actor, source=source
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- staff: nodes -------------------------------------------------------------------------------
class NodeListCreateApi(StaffAPIView):
    @extend_schema_serializer(component_name="NodeRegisterInput")
    class InputSerializer(StrictSerializer):
        name = StrictCharField(max_length=100)
        base_url = serializers.URLField(max_length=300)
        versions = serializers.ListField(child=StrictCharField(max_length=170), required=False, default=list)
        state = serializers.ChoiceField(choices=NodeState.values, required=False, default="down")

    @extend_schema(operation_id="nodes_list", responses=page_serializer("NodePage", NodeOutputSerializer))
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.node_list(), NodeOutputSerializer)

    @extend_schema(operation_id="nodes_register", request=InputSerializer, responses={201: NodeOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        versions = selectors.model_versions_by_label(values.pop("versions"))
        node = services.node_register(actor=self.actor, versions=versions, **values)
        return Response(NodeOutputSerializer(selectors.node_get(node.name)).data, status=status.HTTP_201_CREATED)


class NodeDetailApi(StaffAPIView):
    @extend_schema_serializer(component_name="NodeUpdateInput")
    class InputSerializer(StrictSerializer):
        base_url = serializers.URLField(max_length=300, required=False)
        versions = serializers.ListField(child=StrictCharField(max_length=170), required=False)
        state = serializers.ChoiceField(choices=NodeState.values, required=False)

    @extend_schema(operation_id="nodes_retrieve", responses=NodeOutputSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(NodeOutputSerializer(selectors.node_get(name)).data)

    @extend_schema(operation_id="nodes_update", request=InputSerializer, responses=NodeOutputSerializer)
    def patch(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        labels = values.pop("versions", None)
        versions = selectors.model_versions_by_label(labels) if labels is not None else None
        services.node_update(node=selectors.node_get(name), actor=self.actor, versions=versions, **values)
        return Response(NodeOutputSerializer(selectors.node_get(name)).data)

    @extend_schema(operation_id="nodes_delete", responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        services.node_delete(node=selectors.node_get(name), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)
