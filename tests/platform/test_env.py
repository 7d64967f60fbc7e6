"""Environment variables: what the compose file, the manifests and the images set is exactly what the
settings and the inference configuration read, `.env.example` documents every one, and the values
they set are accepted by the real code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.platform import helpers
from tests.platform.helpers import (
    CONTROL_PLANE_SERVICES,
    INFERENCE_SERVICES,
    LIBRARY_ENV_VARS,
    ROOT,
    compose,
    control_plane_env_vars,
    find,
    inference_env_vars,
    rendered,
)

# Set by the images for Python and pip themselves, not read by our code.
RUNTIME_ENV = {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "DEBIAN_FRONTEND"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a container's server must listen beyond loopback
# The web pod's own IP, only used inside DJANGO_ALLOWED_HOSTS as $(POD_IP).
MANIFEST_HELPERS = {"POD_IP"}
DUMMY_SECRETS = {
    "DJANGO_SECRET_KEY": "k" * 50,
    "INFERENCE_SHARED_SECRET": "s" * 40,
    "MMORCH_METRICS_TOKEN": "m" * 40,
    "POSTGRES_PASSWORD": "p" * 24,
    "GRAFANA_ADMIN_PASSWORD": "g" * 24,
}


def test_the_scanners_find_what_the_code_reads() -> None:
    control = control_plane_env_vars()
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "INFERENCE_SHARED_SECRET", "MMORCH_ENV"} <= control
    assert "PROMETHEUS_MULTIPROC_DIR" in control, "core/observability.py reads it through os.environ"
    inference = inference_env_vars()
    assert {
        "INFERENCE_SHARED_SECRET",
        "INFERENCE_DRAIN_TIMEOUT_S",
        "INFERENCE_MODEL_PATH",
        "INFERENCE_CONFIG",
    } <= inference
    assert not any(name.startswith("DJANGO_") for name in inference)


def test_env_example_documents_exactly_what_the_planes_read() -> None:
    sections = helpers.env_example_sections()
    assert set(sections) == {"shared", "control-plane", "inference", "compose"}
    control, inference = control_plane_env_vars(), inference_env_vars()
    assert set(sections["shared"]) == control & inference
    documented_control = set(sections["control-plane"]) | set(sections["shared"])
    documented_inference = set(sections["inference"]) | set(sections["shared"])
    assert documented_control == control, (
        f"undocumented: {sorted(control - documented_control)}, not read: {sorted(documented_control - control)}"
    )
    assert documented_inference == inference, (
        f"undocumented: {sorted(inference - documented_inference)}, "
        f"not read: {sorted(documented_inference - inference)}"
    )


def test_env_example_compose_section_lists_what_compose_requires() -> None:
    sections = helpers.env_example_sections()
    interpolated = helpers.interpolated_names(compose())
    required = set(re.findall(r"\$\{(\w+):\?", helpers.COMPOSE_FILE.read_text()))
    assert set(sections["compose"]) == required
    documented = {name for section in sections.values() for name in section}
    assert interpolated <= documented, f"compose reads undocumented {sorted(interpolated - documented)}"
    compose_only = set(sections["compose"]) - control_plane_env_vars() - inference_env_vars()
    assert compose_only == {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    # Nothing is set: copying the example to .env changes nothing for `make demo`.
    text = helpers.ENV_EXAMPLE.read_text()
    assert not [line for line in text.splitlines() if re.match(r"^[A-Z_]+=", line)]


def _service_env(name: str) -> dict[str, str]:
    return dict(compose()["services"][name].get("environment") or {})


def test_compose_sets_only_variables_the_planes_read() -> None:
    for name in CONTROL_PLANE_SERVICES:
        extra = set(_service_env(name)) - control_plane_env_vars()
        assert not extra, f"{name} sets {sorted(extra)}, which the control plane does not read"
    for name in INFERENCE_SERVICES:
        extra = set(_service_env(name)) - inference_env_vars()
        assert not extra, f"{name} sets {sorted(extra)}, which the inference plane does not read"


def _configmaps(manifests: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
    return {m["metadata"]["name"]: m.get("data", {}) for m in manifests if m["kind"] == "ConfigMap"}


def _containers(manifests: tuple[dict[str, Any], ...], component: str) -> list[dict[str, Any]]:
    found = []
    for manifest in manifests:
        if manifest["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        if manifest["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component:
            found.extend(manifest["spec"]["template"]["spec"]["containers"])
    assert found, component
    return found


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_manifests_set_only_variables_the_planes_read(overlay: str) -> None:
    manifests = rendered(overlay)
    configmaps = _configmaps(manifests)
    for component in ("web", "worker", "beat", "migrate"):
        for container in _containers(manifests, component):
            names = helpers.container_env_names(container, configmaps)
            extra = names - control_plane_env_vars() - MANIFEST_HELPERS
            assert not extra, f"{component} sets {sorted(extra)}, which the control plane does not read"
            for item in container.get("env", []):
                if item["name"] in MANIFEST_HELPERS:
                    assert any(f"$({item['name']})" in e.get("value", "") for e in container["env"])
    for container in _containers(manifests, "inference"):
        names = helpers.container_env_names(container, configmaps)
        extra = names - inference_env_vars()
        assert not extra, f"inference sets {sorted(extra)}, which the inference plane does not read"


def test_secret_template_keys_are_read_by_the_control_plane() -> None:
    keys = set(helpers.secret_template_keys("mmorch-secrets"))
    assert keys <= control_plane_env_vars()
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "INFERENCE_SHARED_SECRET"} <= keys


@pytest.mark.parametrize("image", ["control-plane", "inference-cpu", "inference-gpu"])
def test_images_set_only_runtime_and_read_variables(image: str) -> None:
    text = (helpers.DOCKER_DIR / f"{image}.Dockerfile").read_text()
    runtime_stage = text.rsplit("\nFROM ", 1)[1]
    joined = runtime_stage.replace("\\\n", " ")
    names = set()
    for line in joined.splitlines():
        if line.strip().startswith("ENV "):
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    read = control_plane_env_vars() if image == "control-plane" else inference_env_vars()
    assert names - RUNTIME_ENV <= read | LIBRARY_ENV_VARS
    if image == "control-plane":
        assert {"DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR"} <= names
    else:
        # `docker run` alone gives a node that listens beyond loopback and journals onto the volume.
        assert {"INFERENCE_HOST", "INFERENCE_JOURNAL_PATH"} <= names
        volume = re.search(r'^VOLUME \["([^"]+)"\]', runtime_stage, re.M)
        journal = re.search(r"INFERENCE_JOURNAL_PATH=(\S+)", joined)
        assert volume and journal and journal[1].startswith(volume[1] + "/")


# --- the values themselves are accepted by the real code ---------------------------------------------

_SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({
    "debug": settings.DEBUG,
    "engine": settings.DATABASES["default"]["ENGINE"],
    "hosts": settings.ALLOWED_HOSTS,
    "redis": settings.REDIS_URL,
    "broker": settings.CELERY_BROKER_URL,
    "secure_cookies": settings.SESSION_COOKIE_SECURE,
}))
"""


def _load_settings(env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    clean.update(env)
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    result = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_compose_settings_load_in_production_mode() -> None:
    env = {k: helpers.interpolate(str(v), DUMMY_SECRETS) for k, v in _service_env("web").items()}
    settings = _load_settings(env)
    assert settings["debug"] is False
    assert settings["engine"] == "django.db.backends.postgresql"
    assert settings["broker"] == settings["redis"] == "redis://redis:6379/0"
    assert "web" in settings["hosts"]
    assert settings["secure_cookies"] is False, "plain HTTP on a laptop"


def test_kubernetes_settings_load_in_production_mode() -> None:
    manifests = rendered("prod")
    (container,) = _containers(manifests, "web")
    env = dict(_configmaps(manifests)["mmorch-config"])
    env.update(
        {
            "DJANGO_SECRET_KEY": DUMMY_SECRETS["DJANGO_SECRET_KEY"],
            "INFERENCE_SHARED_SECRET": DUMMY_SECRETS["INFERENCE_SHARED_SECRET"],
            "DATABASE_URL": "postgres://mmorch:pw@db.internal:5432/mmorch",
            "REDIS_URL": "redis://:pw@redis.internal:6379/0",
        }
    )
    pod_ip = "10.1.2.3"
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("$(POD_IP)", pod_ip)
    settings = _load_settings(env)
    assert settings["debug"] is False
    assert settings["engine"] == "django.db.backends.postgresql"
    assert pod_ip in settings["hosts"]
    assert settings["secure_cookies"] is True


def test_production_refuses_the_compose_env_without_secrets() -> None:
    env = {k: helpers.interpolate(str(v), DUMMY_SECRETS) for k, v in _service_env("web").items()}
    env.pop("DJANGO_SECRET_KEY")
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    clean.update(env)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def _node_config(env: dict[str, str], model_dir: Path) -> Any:
    from inference.config import load_config

    env = dict(env)
    env["INFERENCE_MODEL_PATH"] = str(model_dir)
    return load_config(env)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_compose_inference_env_is_a_valid_node_configuration(model_dir: Path) -> None:
    env = {k: helpers.interpolate(str(v), DUMMY_SECRETS) for k, v in _service_env("inference").items()}
    config = _node_config(env, model_dir)
    assert config.host == ALL_INTERFACES
    assert config.models[0].name == "demo-llama"
    assert config.shared_secrets == [DUMMY_SECRETS["INFERENCE_SHARED_SECRET"]]


@pytest.mark.parametrize(("overlay", "engine"), [("dev", "torch"), ("prod", "vllm")])
def test_manifest_inference_env_is_a_valid_node_configuration(overlay: str, engine: str, model_dir: Path) -> None:
    node = find(rendered(overlay), "StatefulSet", "mmorch-inference")
    (container,) = node["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    env["INFERENCE_SHARED_SECRET"] = "new-secret,old-secret"
    config = _node_config(env, model_dir)
    assert config.host == ALL_INTERFACES
    assert config.port == int(container["ports"][0]["containerPort"])
    assert config.models[0].engine == engine
    assert config.shared_secrets == ["new-secret", "old-secret"], "rotation lists are accepted"
    assert str(config.journal_path).startswith("/var/lib/mmorch/journal/")


# --- documented defaults are the code's defaults --------------------------------------------------------


def _settings_literal_defaults() -> dict[str, Any]:
    import ast

    tree = ast.parse((ROOT / "config" / "settings.py").read_text())
    defaults: dict[str, Any] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "env"):
            continue
        name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
        for keyword in node.keywords:
            if keyword.arg == "default" and name:
                with contextlib.suppress(ValueError):  # computed from another setting: not compared
                    defaults[name] = ast.literal_eval(keyword.value)
    return defaults


def _inference_defaults() -> dict[str, Any]:
    from inference.config import MODEL_ENV, NODE_ENV, OPTION_ENV, EngineOptions, ModelSpec, NodeConfig

    defaults: dict[str, Any] = {}
    for table, model in ((NODE_ENV, NodeConfig), (OPTION_ENV, EngineOptions), (MODEL_ENV, ModelSpec)):
        for var, field_name in table.items():
            default = model.model_fields[field_name].default
            if default is not None and not callable(default) and repr(default) != "PydanticUndefined":
                defaults[var] = default
    return defaults


def _same(documented: str, default: Any) -> bool:
    documented = documented.split("  (")[0].strip()
    if isinstance(default, bool):
        return documented.lower() == str(default).lower()
    if isinstance(default, int | float):
        return float(documented) == float(default)
    if isinstance(default, list):
        return documented.split(",") == [str(item) for item in default] if default else documented == ""
    return documented == str(default)


def test_documented_defaults_match_the_code() -> None:
    documented = {}
    for section in ("control-plane", "inference", "shared"):
        documented.update(helpers.env_example_sections()[section])
    compared = 0
    for name, default in {**_settings_literal_defaults(), **_inference_defaults()}.items():
        if name in documented and name not in {"DJANGO_DEBUG", "DJANGO_SECURE_COOKIES"}:  # depend on MMORCH_ENV
            assert _same(documented[name], default), f"{name}: .env.example says {documented[name]!r}, code {default!r}"
            compared += 1
    assert compared > 30
