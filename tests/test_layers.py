"""The control plane's dependency rule: frontend → billing → gateway → tenants → core, every app
may use `wire`, none imports `config` (the project on top) or a layer above its own.

Imports inside functions count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "tenants", "gateway", "billing", "frontend")
PROJECT = {*LAYERS, "config", "wire", "inference"}


def _project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("layer", LAYERS)
def test_an_app_imports_only_the_layers_below_it_and_wire(layer: str) -> None:
    allowed = {*LAYERS[: LAYERS.index(layer) + 1], "wire"}
    wrong = {
        str(path.relative_to(ROOT)): sorted(imports - allowed)
        for path in sorted((ROOT / layer).rglob("*.py"))
        if (imports := _project_imports(path)) - allowed
    }
    assert wrong == {}


def test_no_module_is_over_500_lines() -> None:
    # Large modules hide decisions; the apps split by entity instead (migrations are generated).
    long = {
        str(path.relative_to(ROOT)): n
        for package in (*LAYERS, "config", "wire", "inference")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) >= 500
    }
    assert long == {}
