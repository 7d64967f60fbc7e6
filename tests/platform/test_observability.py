"""Prometheus configuration, alert rules (promtool) and Grafana dashboards."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.platform import helpers
from tests.platform.helpers import PROMETHEUS_DIR, ROOT, RULE_FILES, RULE_TEST_FILES

OPERATIONS = ROOT / "docs" / "operations.md"
DATASOURCES = ROOT / "platform" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
REQUIRED_ALERTS = {
    "GatewayErrorRateHigh",  # gateway error-rate objective
    "GatewayLatencyP95High",  # gateway p95 latency objective
    "InferenceQueueSaturated",  # inference queue saturation
    "InferenceNodeDown",  # node down
    "UsageIngestionLagging",  # usage ingestion lag
    "InvoiceRunFailed",  # invoice run failure
    "TenantAtQuota",  # tenants at quota
    "SLOAvailabilityFastBurn",  # per-tenant availability objective, 1h/5m at 14.4x
    "SLOAvailabilitySlowBurn",  # the same, 6h/30m at 6x
    "SLOTimeToFirstTokenMissed",  # per-tenant p95 time to first token objective
    "SLOInterTokenLatencyMissed",  # per-tenant p95 inter-token latency objective
    "InferenceErrorRateHigh",  # anomalies: errors, latency, queue growth, flapping, ingestion
    "InferenceTimeToFirstTokenHigh",
    "InferenceQueueGrowing",
    "InferenceNodeFlapping",
    "UsageIngestionStalled",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make setup-system` installs Debian's prometheus package")
    return path


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check() -> None:
    assert len(RULE_FILES) >= 2, RULE_FILES
    result = _run_promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(foo[5m])\n")
    assert _run_promtool("check", "rules", str(bad)).returncode != 0


def test_alerts_fire_in_the_rule_unit_tests() -> None:
    result = _run_promtool("test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for path in RULE_TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {rule["alert"] for rule in helpers.alert_rules() if "alert" in rule}
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # The same file with the rules where this checkout has them, so promtool checks those too.
    config["rule_files"] = [str(path) for path in RULE_FILES]
    # Both planes' /metrics ask for the bearer token; promtool wants the credentials file to exist.
    token_file = tmp_path / "metrics_token"
    token_file.write_text("t" * 40)
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("mmorch-"):
            assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
            job["authorization"]["credentials_file"] = str(token_file)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = _run_promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout or "rules found" in result.stdout


def test_every_required_alert_exists_with_severity_and_runbook() -> None:
    alerts = {rule["alert"]: rule for rule in helpers.alert_rules() if "alert" in rule}
    assert set(alerts) >= REQUIRED_ALERTS
    anchors = _markdown_anchors(OPERATIONS.read_text())
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        runbook = rule["annotations"]["runbook"]
        assert runbook == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no runbook section for {name}"


def _markdown_anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_dashboards_are_provisioned_against_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    dashboards = helpers.dashboards()
    assert set(dashboards) == {"platform.json", "tenant-usage.json", "inference.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in dashboards.items():
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len(panels) >= 6, name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"], (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"]
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] == datasource["uid"]


def test_every_dashboard_query_parses_in_prometheus(tmp_path: Path) -> None:
    """promtool parses each panel's PromQL (Grafana variables filled in) as a recording rule."""
    rules = []
    for name, dashboard in helpers.dashboards().items():
        variables = [v["name"] for v in dashboard["templating"]["list"]]
        for index, expr in enumerate(helpers.dashboard_queries(dashboard)):
            slug = re.sub(r"\W", "_", name)
            rules.append({"record": f"dashboard:{slug}:{index}", "expr": helpers.grafana_to_promql(expr, variables)})
    assert len(rules) > 30
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_cover_platform_tenants_and_inference() -> None:
    dashboards = helpers.dashboards()
    names = {
        file: {m for q in helpers.dashboard_queries(d) for m in helpers.promql_metric_names(q)}
        for file, d in dashboards.items()
    }
    assert "mmorch:gateway_error_ratio:rate5m" in names["platform.json"]
    assert {"mmorch_inference_prompt_tokens_total", "mmorch_inference_completion_tokens_total"} <= names[
        "tenant-usage.json"
    ]
    assert "tenant" in {v["name"] for v in dashboards["tenant-usage.json"]["templating"]["list"]}
    assert {"mmorch_inference_waiting_requests", "mmorch_inference_batch_size"} <= names["inference.json"]


def test_metric_name_extraction() -> None:
    expr = 'sum by (tenant, le) (rate(mmorch_x_bucket{route=~"v1/.*", q="mmorch_fake"}[5m])) / on(instance) mmorch:y'
    assert helpers.promql_metric_names(expr) == {"mmorch_x_bucket", "mmorch:y"}
