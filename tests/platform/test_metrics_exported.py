"""Every metric the alert rules and dashboards name is exported by the running planes.

The control plane is driven in-process through Django's test client (its real middleware and
registry); the inference plane is a real `python -m inference` process that serves a completion.
Both `/metrics` pages are parsed, and the sample names each family can produce (counter `_total`,
histogram `_bucket`/`_sum`/`_count`, ...) are compared with the names the rules and dashboards use.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.platform import helpers

# The control plane's /metrics reads the database (billing's scrape-time collectors); the mark also
# makes pytest-django create the test database that the package fixture uses.
pytestmark = pytest.mark.django_db

V1_ROUTE_REGEX = "v1/.*"  # as in the gateway rules of platform/prometheus/rules/mmorch-alerts.yml

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "untyped": ("",),
}


def exported_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def referenced_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert rules, recording rules and dashboards)."""
    used: dict[str, set[str]] = {}
    for rule in helpers.alert_rules():
        for name in helpers.promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    for file, dashboard in helpers.dashboards().items():
        for query in helpers.dashboard_queries(dashboard):
            for name in helpers.promql_metric_names(query):
                used.setdefault(name, set()).add(f"dashboard {file}")
    return used


def test_rules_and_dashboards_name_only_exported_metrics(control_plane_metrics: str, inference_metrics: str) -> None:
    exported = exported_names(control_plane_metrics) | exported_names(inference_metrics)
    exported |= helpers.recording_rule_names()
    used = referenced_names()
    assert len(used) >= 12, "the rules and dashboards were read"
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"named but not exported: {missing}"


def _declared_labels() -> dict[str, set[str]]:
    """Label names the control plane's metric objects declare (for counters no request has touched yet,
    such as the gateway's quota refusals)."""
    from prometheus_client import REGISTRY

    labels: dict[str, set[str]] = {}
    # No public accessor for the declared label names.
    for collector, names in REGISTRY._collector_to_names.items():
        declared = getattr(collector, "_labelnames", None)
        if declared is not None:
            for name in names:
                labels.setdefault(name, set()).update(declared)
    return labels


def _labels_by_metric(*expositions: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = _declared_labels()
    for exposition in expositions:
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _expressions() -> list[str]:
    exprs = [rule["expr"] for rule in helpers.alert_rules()]
    for dashboard in helpers.dashboards().values():
        exprs.extend(helpers.dashboard_queries(dashboard))
    return exprs


# Added by Prometheus to every scraped series.
TARGET_LABELS = {"job", "instance"}


def test_rules_and_dashboards_use_only_exported_labels(control_plane_metrics: str, inference_metrics: str) -> None:
    """A grouping or filter on a label the metric lacks silently yields one series or none."""
    labels = _labels_by_metric(control_plane_metrics, inference_metrics)
    checked = 0
    for expr in _expressions():
        metrics = helpers.promql_metric_names(expr)
        if not metrics or any(":" in m for m in metrics):
            continue
        available = set().union(*(labels.get(m, set()) for m in metrics)) | TARGET_LABELS
        unknown = helpers.promql_label_names(expr) - available
        assert not unknown, f"{expr}: labels {sorted(unknown)} not on {sorted(metrics)}"
        checked += 1
    assert checked > 20


def test_label_extraction() -> None:
    expr = 'sum by (tenant, le) (rate(x_bucket{route=~"v1/.*", status!="200"}[5m])) / ignoring(a) y'
    assert helpers.promql_label_names(expr) == {"tenant", "le", "route", "status"}


def test_the_request_shows_up_per_tenant(inference_metrics: str) -> None:
    """The tenant label the per-tenant dashboard groups by carries the signed tenant id."""
    samples = [
        sample
        for family in text_string_to_metric_families(inference_metrics)
        for sample in family.samples
        if sample.name == "mmorch_inference_completion_tokens_total"
    ]
    assert any(s.labels.get("tenant") == "7" and s.value > 0 for s in samples), samples


def test_the_gateway_route_label_matches_the_rules(control_plane_metrics: str) -> None:
    """Rules select /v1 traffic with route=~"v1/.*"; the fixture's unauthenticated /v1 call is labelled so."""
    routes = {
        (sample.labels["route"], sample.labels["status"])
        for family in text_string_to_metric_families(control_plane_metrics)
        for sample in family.samples
        if sample.name == "mmorch_http_requests_total"
    }
    assert ("healthz", "200") in routes
    assert ("v1/models", "401") in routes, routes
    assert re.fullmatch(V1_ROUTE_REGEX, "v1/models")
    # The selector is anchored: the management API (api/v1/...) and the dashboard stay out of the
    # gateway's objectives, whatever other requests this process has served.
    matched = {route for route, _ in routes if re.fullmatch(V1_ROUTE_REGEX, route)}
    assert all(route.startswith("v1/") for route in matched), matched
