"""Dependencies point one way: `wire` imports neither plane, `inference` only `wire`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ("config", "core", "tenants", "gateway", "billing", "frontend")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _top_levels(package: str) -> dict[Path, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    return {path: {name.split(".")[0] for name in _imported_modules(path)} for path in files}


def test_wire_imports_neither_django_nor_a_plane() -> None:
    code = (
        "import sys, pkgutil, importlib, wire\n"
        "for m in pkgutil.walk_packages(wire.__path__, 'wire.'): importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {('django', 'inference', *CONTROL_PLANE)!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
    for path, tops in _top_levels("wire").items():
        assert not tops & {"django", "inference", *CONTROL_PLANE}, path


def test_inference_imports_only_wire_of_the_project() -> None:
    for path, tops in _top_levels("inference").items():
        assert not tops & {"django", *CONTROL_PLANE}, (path, tops & set(CONTROL_PLANE))


def test_no_control_plane_module_imports_inference() -> None:
    for package in CONTROL_PLANE:
        for path, tops in _top_levels(package).items():
            assert "inference" not in tops, path
