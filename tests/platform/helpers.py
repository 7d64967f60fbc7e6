"""Shared readers for the deployment checks: environment variables the code reads, PromQL metric
names, Dockerfiles and their ignore files, and the rendered manifests."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.platform import kustomize

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "platform" / "docker"
PROMETHEUS_DIR = ROOT / "platform" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "mmorch-alerts.yml"
# Every rule file Prometheus loads (rules/*.yml): the platform alerts, then SLOs and anomalies.
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
DASHBOARDS_DIR = ROOT / "platform" / "grafana" / "dashboards"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S = ROOT / "k8s"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
SECRET_TEMPLATE = K8S / "base" / "secret.example.yaml"

CONTROL_PLANE_PACKAGES = ("config", "core", "wire", "tenants", "gateway", "billing", "frontend")
CONTROL_PLANE_SERVICES = ("migrate", "web", "worker", "beat")
INFERENCE_SERVICES = ("inference",)


# --- environment variables read by the code ---------------------------------------------------


def _python_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts and "node_modules" not in path.parts:
                yield path


def _constant_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_environ(node: ast.AST) -> bool:
    """`os.environ`, `environ` or a local alias named `env`/`environ` (inference.config uses `env`)."""
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return True
    return isinstance(node, ast.Name) and node.id in {"environ", "env"}


def environ_reads(tree: ast.AST) -> set[str]:
    """Names read through os.environ / os.getenv / an environ mapping, with a literal name."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            name = _constant_str(node.args[0]) if node.args else None
            if name is None:
                continue
            if (func.attr in {"get", "setdefault", "pop"} and _is_environ(func.value)) or func.attr == "getenv":
                found.add(name)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = _constant_str(node.slice)
            if name is not None:
                found.add(name)
    return found


def django_env_reads(tree: ast.AST) -> set[str]:
    """django-environ calls: `env("X")`, `env.str("X", ...)`, `env.db("X")`, ..."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        is_env = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
            and func.attr not in {"read_env", "get", "setdefault", "pop"}
        )
        name = _constant_str(node.args[0])
        if is_env and name is not None:
            found.add(name)
    return found


@cache
def control_plane_env_vars() -> frozenset[str]:
    """Every variable the control plane reads: settings (django-environ) plus direct os.environ reads."""
    found: set[str] = set()
    for path in _python_files(*CONTROL_PLANE_PACKAGES):
        tree = ast.parse(path.read_text(), filename=str(path))
        found |= environ_reads(tree)
        if path == ROOT / "config" / "settings.py":
            found |= django_env_reads(tree)
    found |= environ_reads(ast.parse((ROOT / "manage.py").read_text()))
    return frozenset(found)


def _env_table_keys(tree: ast.AST) -> set[str]:
    """Keys of module-level `*_ENV = {"INFERENCE_X": ...}` tables (inference.config)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if any(n.endswith("_ENV") for n in names) and isinstance(node.value, ast.Dict):
                found |= {k for k in (_constant_str(key) for key in node.value.keys) if k}
    return found


@cache
def inference_env_vars() -> frozenset[str]:
    found: set[str] = set()
    for path in _python_files("inference"):
        tree = ast.parse(path.read_text(), filename=str(path))
        found |= environ_reads(tree) | _env_table_keys(tree)
    return frozenset(found)


# Read by libraries rather than by our code, but set on purpose by the images.
LIBRARY_ENV_VARS = frozenset({"PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE"})


# --- .env.example ------------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^#\s*\[(?P<name>[a-z-]+)\]")
_VAR_RE = re.compile(r"^#?\s*(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def env_example_sections() -> dict[str, dict[str, str]]:
    """`# [section]` headers, then `NAME=value` or commented `# NAME=value` lines."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in ENV_EXAMPLE.read_text().splitlines():
        header = _SECTION_RE.match(line)
        if header:
            current = sections.setdefault(header["name"], {})
            continue
        var = _VAR_RE.match(line)
        if var and current is not None:
            current[var["name"]] = var["value"]
    return sections


# --- compose -----------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


_INTERPOLATION_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


def interpolated_names(value: Any) -> set[str]:
    text = json.dumps(value)
    return {m["name"] for m in _INTERPOLATION_RE.finditer(text.replace("$$", ""))}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${X}`, `${X:-default}`, `${X:?error}` (the subset the compose file uses)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        given = variables.get(name, "")
        if op in {":-", "-"}:
            return given or arg
        if op in {":?", "?"} and not given:
            raise KeyError(f"{name}: {arg}")
        return given

    return _INTERPOLATION_RE.sub(replace, value).replace("$$", "$")


# --- kubernetes ---------------------------------------------------------------------------------


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize.build(OVERLAYS[overlay]))


def find(manifests: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container_env_names(container: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> set[str]:
    """Variables a container gets: explicit env plus envFrom ConfigMaps (and the Secret template)."""
    names = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            names |= set(secret_template_keys(source["secretRef"]["name"]))
    return names


def secret_template_keys(name: str) -> dict[str, str]:
    template = yaml.safe_load(SECRET_TEMPLATE.read_text())
    assert template["metadata"]["name"] == name, f"no template for Secret {name}"
    return dict(template.get("stringData") or {})


# --- PromQL --------------------------------------------------------------------------------------

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS_RE = re.compile(r"\{[^{}]*\}")
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_metric_names(expr: str, *, prefix: str = "mmorch") -> set[str]:
    """Names of the series an expression selects (ours only: `mmorch_*` and recording rules `mmorch:*`)."""
    text = _STRING_RE.sub('""', expr)
    text = _MATCHERS_RE.sub("{}", text)
    text = _GROUPING_RE.sub("", text)
    return {name for name in _NAME_RE.findall(text) if name.startswith((prefix + "_", prefix + ":"))}


def rule_groups() -> list[dict[str, Any]]:
    """The groups of every rule file, in file order (as k8s/monitoring/prometheusrule.yaml holds them)."""
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def recording_rule_names() -> set[str]:
    return {rule["record"] for rule in alert_rules() if "record" in rule}


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and query variables."""
    queries = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((?P<expr>.+),\s*\w+\)", query)
            assert match, f"unsupported variable query {query!r}"
            queries.append(match["expr"])
    return queries


GRAFANA_PLACEHOLDERS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "6h",
}


def grafana_to_promql(expr: str, variables: list[str]) -> str:
    """Grafana's built-ins and `$var` filled in with values Prometheus can parse."""
    for placeholder, value in GRAFANA_PLACEHOLDERS.items():
        expr = expr.replace(placeholder, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", ".*")
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


_MATCHER_LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING_LABELS_RE = re.compile(r"\b(?:by|without)\s*\(([^()]*)\)")


def promql_label_names(expr: str) -> set[str]:
    """Labels an expression filters or groups by (matchers and by/without clauses)."""
    text = _STRING_RE.sub('""', expr)
    labels = {name for block in _MATCHERS_RE.findall(text) for name in _MATCHER_LABEL_RE.findall(block)}
    for group in _GROUPING_LABELS_RE.findall(text):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels
