"""The schema's own promises: one operationId each, the error envelope declared everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema() -> dict[str, Any]:
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def test_operation_ids_are_unique(schema: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(schema)]
    assert len(ids) == len(set(ids))
    assert {"usage_list", "usage_list_slash"} <= set(ids)


def test_every_operation_declares_the_error_envelope(schema: dict[str, Any]) -> None:
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for method, path, op in _operations(schema):
        responses = op["responses"]
        assert "403" in responses, (method, path)
        if op.get("security"):
            assert "401" in responses, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415"} <= set(responses), (method, path)
        ref = responses["403"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/Error"


def test_request_bodies_refuse_unknown_fields(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for method, path, op in _operations(schema):
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        if "$ref" in body:
            assert components[body["$ref"].rsplit("/", 1)[-1]]["additionalProperties"] is False, (method, path)


def test_paginated_lists_are_declared_as_pages(schema: dict[str, Any]) -> None:
    op = schema["paths"]["/api/v1/tenants/{slug}/models/"]["get"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert set(schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]) >= {"count", "results"}
    assert {"page", "page_size"} <= {p["name"] for p in op["parameters"]}
