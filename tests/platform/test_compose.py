"""docker-compose.yaml: valid against the Compose specification and wired up sensibly.

compose-spec.json beside this file is the Compose specification's JSON schema
(github.com/compose-spec/compose-spec, schema/compose-spec.json; Apache-2.0, see compose-spec.LICENSE),
as vendored by the PyPI package check-jsonschema 0.39.0 (sha256 below).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.platform import helpers
from tests.platform.helpers import ROOT, compose

SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
SECRET_NAMES = {
    "DJANGO_SECRET_KEY",
    "INFERENCE_SHARED_SECRET",
    "MMORCH_METRICS_TOKEN",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
}
ONE_SHOT = {"migrate", "demo-seed"}


def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)


def _services() -> dict[str, Any]:
    return compose()["services"]


def _duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(number) * units[unit]
    assert total, f"not a duration: {value!r}"
    return total


def test_vendored_schema_is_the_published_one() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert SCHEMA["title"] == "Compose Specification"


def test_compose_file_validates_against_the_compose_specification() -> None:
    errors = sorted(_validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_is_strict_enough_to_catch_mistakes() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert list(_validator().iter_errors(broken))
    broken = copy.deepcopy(compose())
    broken["services"]["web"]["helthcheck"] = {"test": ["CMD", "true"]}
    assert list(_validator().iter_errors(broken))


def test_every_service_the_platform_needs_is_there() -> None:
    assert set(_services()) == {
        "postgres",
        "pgbouncer",
        "redis",
        "migrate",
        "web",
        "worker",
        "beat",
        "inference",
        "prometheus",
        "grafana",
        "otel-collector",
        "demo-seed",
    }
    assert _services()["migrate"]["command"] == ["migrate"]
    assert _services()["migrate"]["restart"] == "no"
    assert _services()["web"]["command"][0] == "web"
    assert _services()["worker"]["command"][0] == "worker"
    assert _services()["beat"]["command"] == ["beat"]
    inference_command = " ".join(_services()["inference"]["command"])
    assert "python -m inference.demo_model /var/lib/mmorch/models/demo-llama" in inference_command
    assert inference_command.endswith("exec python -m inference")


def test_demo_seed_is_optional_and_calls_the_seed_script_as_it_is() -> None:
    import ast

    service = _services()["demo-seed"]
    assert service["profiles"] == ["demo"], "`docker compose up` alone seeds nothing"
    assert service["entrypoint"] == ["python", "scripts/demo_seed.py"]
    script = ROOT / "scripts" / "demo_seed.py"
    options = {
        node.args[0].value
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "add_argument"
        and isinstance(node.args[0], ast.Constant)
    }
    assert {arg.split("=", 1)[0] for arg in service["command"]} <= options
    assert "./scripts:/app/scripts:ro" in service["volumes"]
    node_url = next(arg for arg in service["command"] if arg.startswith("--node-url=")).split("=", 1)[1]
    assert node_url == "http://inference:" + _services()["inference"]["environment"]["INFERENCE_PORT"]
    # The credentials volume mounts where the image made a directory the service user owns.
    text = (helpers.DOCKER_DIR / "control-plane.Dockerfile").read_text()
    assert "install -d -o mmorch -g mmorch -m 0700 /app/var /app/var/demo" in text


def test_start_order_waits_on_health() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            condition = spec["condition"]
            if dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, dependency)
            else:
                assert condition == "service_healthy", (name, dependency)
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dependency} has no health check"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_long_running_services_have_health_checks() -> None:
    # beat serves nothing to probe: the container ends with the process and restarts. The
    # collector's image has nothing to probe with, and nothing waits on it.
    unprobed = {name for name, s in _services().items() if s.get("healthcheck", {}).get("disable")}
    assert unprobed == ONE_SHOT | {"beat", "otel-collector"}
    for name, service in _services().items():
        if name not in unprobed:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
            assert service["restart"] == "unless-stopped", name


def test_secrets_come_from_the_env_file_and_none_is_committed() -> None:
    text = helpers.COMPOSE_FILE.read_text()
    for name in SECRET_NAMES:
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} must be required from .env"
    for service in _services().values():
        for key, value in (service.get("environment") or {}).items():
            if key in SECRET_NAMES or "PASSWORD" in key or "SECRET" in key:
                assert helpers.interpolated_names(value), f"{key} is written in the compose file"
        assert "env_file" not in service, "variables are named one by one, so the set is checked"
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore


def test_interpolation_fails_without_secrets_and_succeeds_with_them() -> None:
    web_env = _services()["web"]["environment"]
    with pytest.raises(KeyError, match="DJANGO_SECRET_KEY"):
        helpers.interpolate(web_env["DJANGO_SECRET_KEY"], {})
    filled = {name: "x" * 40 for name in SECRET_NAMES}
    url = helpers.interpolate(web_env["DATABASE_URL"], filled)
    assert url == f"postgres://mmorch:{'x' * 40}@pgbouncer:6432/mmorch"
    url = helpers.interpolate(_services()["migrate"]["environment"]["DATABASE_URL"], filled)
    assert url == f"postgres://mmorch:{'x' * 40}@postgres:5432/mmorch"


def test_long_running_services_reach_postgres_through_pgbouncer_in_transaction_mode() -> None:
    services = _services()
    bouncer = services["pgbouncer"]
    assert bouncer["environment"]["POOL_MODE"] == "transaction"
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ":latest" not in bouncer["image"] and ":" in bouncer["image"]
    port = bouncer["environment"]["LISTEN_PORT"]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert f"@pgbouncer:{port}/" in env["DATABASE_URL"], name
        # What transaction pooling needs: no server-side cursors, no second pool in Django.
        assert env["DATABASE_PGBOUNCER"] == "true", name
        assert "DATABASE_POOL" not in env, name
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy", name
    # Migrations hold session-level locks: they talk to PostgreSQL itself.
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_URL"]


def test_files_the_compose_file_refers_to_exist() -> None:
    for name, service in _services().items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in compose()["volumes"], (name, source)


def test_inference_gets_longer_to_stop_than_it_drains() -> None:
    service = _services()["inference"]
    drain = float(service["environment"]["INFERENCE_DRAIN_TIMEOUT_S"])
    assert _duration_s(service["stop_grace_period"]) > drain
    journal = service["environment"]["INFERENCE_JOURNAL_PATH"]
    volumes = dict(v.split(":", 1)[::-1] for v in service["volumes"])
    assert any(journal.startswith(path + "/") and path in volumes for path in volumes)
    assert volumes["/var/lib/mmorch/journal"] in compose()["volumes"], "the journal is on a named volume"


def test_prometheus_and_grafana_are_provisioned_from_the_repository() -> None:
    prometheus = _services()["prometheus"]
    mounts = dict(v.split(":")[:2][::-1] for v in prometheus["volumes"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "./platform/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./platform/prometheus/rules"
    grafana = _services()["grafana"]
    mounts = dict(v.split(":")[:2][::-1] for v in grafana["volumes"])
    assert mounts["/etc/grafana/provisioning"] == "./platform/grafana/provisioning"
    provider = helpers.yaml.safe_load((ROOT / "platform/grafana/provisioning/dashboards/mmorch.yml").read_text())[
        "providers"
    ][0]
    assert mounts[provider["options"]["path"]] == "./platform/grafana/dashboards"
    # Prometheus scrapes the compose services by name.
    config = helpers.yaml.safe_load((helpers.PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {"web:8000", "inference:8100"} <= targets
    assert "web" in _services()["web"]["environment"]["DJANGO_ALLOWED_HOSTS"], "Prometheus sends Host: web"


def test_every_process_logs_json_and_sends_spans_to_the_collector() -> None:
    services = _services()
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert collector["image"].split(":")[1][0].isdigit(), "a pinned collector version"
    mounts = dict(v.split(":")[:2][::-1] for v in collector["volumes"])
    config_file = mounts["/etc/otelcol/config.yaml"]
    assert collector["command"] == ["--config=/etc/otelcol/config.yaml"]
    config = helpers.yaml.safe_load((ROOT / config_file).read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    for name in (*helpers.CONTROL_PLANE_SERVICES, *helpers.INFERENCE_SERVICES):
        env = services[name]["environment"]
        assert helpers.interpolate(env["MMORCH_LOG_FORMAT"], {}) == "json", name
        assert helpers.interpolate(env["OTEL_EXPORTER_OTLP_ENDPOINT"], {}) == "http://otel-collector:4318", name
