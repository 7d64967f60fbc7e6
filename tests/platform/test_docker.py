"""Container images: what they copy exists and is in the build context, they run unprivileged with a
health check, and the Python packages they install cover every import of the code they ship."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.platform.helpers import DOCKER_DIR, ROOT

IMAGES = ("control-plane", "inference-cpu", "inference-gpu")
PACKAGING_TOOLS = {"pip", "setuptools", "wheel"}
FIRST_PARTY = {"config", "core", "wire", "tenants", "gateway", "billing", "frontend", "inference", "manage"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
        else:
            lines.append(current + stripped)
            current = ""
    assert not current, "dangling line continuation"
    return lines


@cache
def parse_dockerfile(image: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines((DOCKER_DIR / f"{image}.Dockerfile").read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, rest))
    return args, stages


def _copy_sources(rest: str) -> tuple[list[str], dict[str, str]]:
    words = shlex.split(rest)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], flags


def _dockerignore(image: str) -> list[str]:
    path = DOCKER_DIR / ("dockerignore" if image == "shared" else f"{image}.Dockerfile.dockerignore")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def in_build_context(image: str, path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder covers its files."""
    path = path.strip("/")
    parents = [path[: i.start()] for i in re.finditer("/", path)] + [path]
    included = True
    for pattern in _dockerignore(image):
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in parents):
            included = negate
    return included


@pytest.mark.parametrize("image", IMAGES)
def test_every_copied_file_exists_and_is_in_the_build_context(image: str) -> None:
    _, stages = parse_dockerfile(image)
    copied = 0
    for stage in stages:
        for instruction, rest in stage.instructions:
            if instruction not in {"COPY", "ADD"}:
                continue
            sources, flags = _copy_sources(rest)
            if "from" in flags:
                assert flags["from"] in {s.name for s in stages}, f"unknown stage {flags['from']}"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{image}: COPY {source} does not exist"
                assert in_build_context(image, source), f"{image}: {source} is excluded by the dockerignore"
                copied += 1
    assert copied >= 2


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_leaves_local_state_out(image: str) -> None:
    for path in (".venv/bin/python", ".env", "var/db.sqlite3", ".git/HEAD", "frontend/node_modules/x.js"):
        assert not in_build_context(image, path), f"{image} would send {path}"
    assert not in_build_context(image, "inference/__pycache__/client.cpython-311.pyc")
    assert in_build_context(image, "inference/client.py")


def test_shared_dockerignore_serves_every_image() -> None:
    """platform/docker/dockerignore (for a root .dockerignore) keeps what any image copies, nothing else."""
    for image in IMAGES:
        for stage in parse_dockerfile(image)[1]:
            for instruction, rest in stage.instructions:
                sources, flags = _copy_sources(rest) if instruction == "COPY" else ([], {})
                for source in sources if "from" not in flags else []:
                    assert in_build_context("shared", source), source
    for path in (".venv/bin/python", ".env", "var/db.sqlite3", ".git/HEAD", "docs/operations.md", "tests/conftest.py"):
        assert not in_build_context("shared", path), path


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert in_build_context("control-plane", "config/settings.py")
    assert not in_build_context("control-plane", "docs/operations.md")
    assert not in_build_context("control-plane", "frontend/static/vendor/htmx.min.js")
    assert in_build_context("control-plane", "frontend/templates/base.html")


@pytest.mark.parametrize("image", IMAGES)
def test_images_are_multi_stage_unprivileged_and_health_checked(image: str) -> None:
    args, stages = parse_dockerfile(image)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    instructions = [i for i, _ in final.instructions]
    users = [rest for i, rest in final.instructions if i == "USER"]
    assert users, "the runtime stage drops root"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in instructions
    assert "EXPOSE" in instructions
    health = next(rest for i, rest in final.instructions if i == "HEALTHCHECK")
    port = next(rest for i, rest in final.instructions if i == "EXPOSE").split()[0]
    assert f"127.0.0.1:{port}/" in health
    base = final.base
    if base.startswith("${"):
        base = args[base[2:-1]]
    assert "slim" in base or "runtime" in base, f"{image}: runtime base {base} is not a slim one"
    for stage in stages:
        for instruction, rest in stage.instructions:
            if instruction == "RUN" and "pip install" in rest:
                assert "-c /tmp/" in rest or "--no-deps" in rest, "versions come from the lock"


def test_inference_health_checks_use_the_port_the_node_listens_on() -> None:
    from inference.config import NodeConfig

    default_port = NodeConfig.model_fields["port"].default
    for image in ("inference-cpu", "inference-gpu"):
        final = parse_dockerfile(image)[1][-1]
        exposed = next(rest for i, rest in final.instructions if i == "EXPOSE")
        assert exposed == str(default_port)
        cmd = next(rest for i, rest in final.instructions if i == "CMD")
        assert cmd == '["python", "-m", "inference"]'


def test_entrypoint_script_is_valid_and_handles_every_role() -> None:
    script = DOCKER_DIR / "control-plane-entrypoint.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    for role, command in {
        "web": "uvicorn config.asgi:application",
        "worker": "celery -A config --quiet worker",
        "beat": "celery -A config --quiet beat",
        "migrate": "python manage.py migrate",
    }.items():
        assert re.search(rf"^\s*{role}\)\s*$", text, re.M), role
        assert command in text
    assert "--http httptools --loop uvloop" in text


def _run_entrypoint(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None) -> tuple[str, Path]:
    """Run the script with stand-ins for uvicorn, celery and python that print how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program in ("uvicorn", "celery", "python"):
        stub = bin_dir / program
        stub.write_text(f'#!/bin/sh\necho "{program} $* multiproc=${{PROMETHEUS_MULTIPROC_DIR:-unset}}"\n')
        stub.chmod(0o755)
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir(exist_ok=True)
    (metrics_dir / "counter_123.db").write_text("stale")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env_extra or {})}
    result = subprocess.run(
        ["sh", str(DOCKER_DIR / "control-plane-entrypoint.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip(), metrics_dir


def test_entrypoint_web_starts_uvicorn_on_an_empty_metrics_directory(tmp_path: Path) -> None:
    output, metrics_dir = _run_entrypoint(tmp_path, "web", "--workers", "3")
    assert output.startswith("uvicorn config.asgi:application")
    assert "--workers 3" in output
    assert f"multiproc={metrics_dir}" in output
    assert metrics_dir.is_dir()
    assert list(metrics_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("trusted", "allowed"),
    [(None, "127.0.0.1"), ("", "127.0.0.1"), ("10.0.0.0/8,192.168.1.7", "10.0.0.0/8,192.168.1.7")],
)
def test_entrypoint_web_trusts_forwarded_headers_only_from_the_trusted_proxies(
    tmp_path: Path, trusted: str | None, allowed: str
) -> None:
    """uvicorn rewrites the client address from X-Forwarded-For only for MMORCH_TRUSTED_PROXIES."""
    env_extra = None if trusted is None else {"MMORCH_TRUSTED_PROXIES": trusted}
    output, _ = _run_entrypoint(tmp_path, "web", env_extra=env_extra)
    assert f"--proxy-headers --forwarded-allow-ips {allowed} " in output
    assert "*" not in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("worker", "--concurrency", "2"), "celery -A config --quiet worker --loglevel INFO --concurrency 2"),
        (("beat",), "celery -A config --quiet beat"),
        (("migrate",), "python manage.py migrate --noinput"),
        (("ingest_usage",), "python manage.py ingest_usage"),
    ],
)
def test_entrypoint_other_roles_leave_the_web_metrics_alone(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    output, metrics_dir = _run_entrypoint(tmp_path, *args)
    assert output.startswith(expected)
    assert output.endswith("multiproc=unset")
    assert [p.name for p in metrics_dir.iterdir()] == ["counter_123.db"]


# --- Python packages -------------------------------------------------------------------------------


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _pyproject() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"main": {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        groups[extra] = {canonicalize_name(Requirement(r).name) for r in requirements}
    return groups


def _requirements_in(name: str) -> list[Requirement]:
    text = (DOCKER_DIR / f"{name}.requirements.in").read_text()
    return [Requirement(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Installed distributions these requirements pull in (extras and markers honoured)."""
    environment = default_environment()
    seen: set[str] = set()
    pending = [(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        seen.add(name)
        for raw in importlib.metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is not None:
                contexts = [{**environment, "extra": e} for e in (extras or {""})]
                if not any(requirement.marker.evaluate(c) for c in contexts):
                    continue
            pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return seen


def _module_files(packages: tuple[str, ...]) -> list[Path]:
    files = []
    for package in packages:
        target = ROOT / package
        if target.is_file():
            files.append(target)
            continue
        files.extend(p for p in target.rglob("*.py") if "node_modules" not in p.parts)
    return files


def _third_party_imports(files: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in FIRST_PARTY}


def _inference_modules_used_by_control_plane() -> list[Path]:
    """The control plane imports inference.client (and what that imports), nothing heavier."""
    files: list[Path] = []
    todo = ["inference"]
    for path in _module_files(("config", "tenants", "gateway", "billing", "frontend")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inference"):
                todo.append(node.module)
                todo.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.startswith("inference"))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        base = ROOT / Path(*module.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.is_file():
            continue
        files.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inference"):
                todo.append(node.module)
    return files


def _distributions_of(modules: set[str]) -> dict[str, set[str]]:
    mapping = importlib.metadata.packages_distributions()
    return {module: {canonicalize_name(d) for d in mapping.get(module, [])} for module in modules}


IMAGE_CODE = {
    "control-plane": lambda: (
        _module_files(("config", "core", "wire", "tenants", "gateway", "billing", "frontend", "manage.py"))
        + _inference_modules_used_by_control_plane()
    ),
    "inference": lambda: _module_files(("inference",)),
}
# Loaded by name rather than imported: the entry point's programs and the PostgreSQL driver that
# Django loads for DATABASE_URL=postgres://...
RUNTIME_MODULES = {"control-plane": {"uvicorn", "httptools", "uvloop", "celery", "psycopg"}, "inference": {"uvicorn"}}


def _settings_modules() -> set[str]:
    """Top-level modules named in settings strings (INSTALLED_APPS, MIDDLEWARE, backends, storages)."""
    tree = ast.parse((ROOT / "config" / "settings.py").read_text())
    dotted = re.compile(r"^[a-z_][a-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    known = set(importlib.metadata.packages_distributions())
    names = {
        node.value.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and dotted.match(node.value)
    }
    return {name for name in names if name in known and name not in sys.stdlib_module_names}


# Imported only by the GPU engine adapter, which the CPU image never loads; the GPU image installs it.
# The gateway counts prompt tokens with transformers when it is installed; the control-plane image
# leaves it out, and there the gateway asks a node (gateway/tokens.py).
OPTIONAL_IMPORTS = {"inference": {"vllm"}, "control-plane": {"transformers"}}


@pytest.mark.parametrize("name", ["control-plane", "inference"])
def test_image_requirements_are_project_dependencies_pinned_by_the_lock(name: str) -> None:
    declared = _pyproject()
    requirements = _requirements_in(name)
    assert requirements
    for requirement in requirements:
        assert canonicalize_name(requirement.name) in declared["main"], requirement.name
        assert not requirement.specifier, "versions come from requirements.lock"
    # `pip freeze` leaves the packaging tools out of the lock; torch needs setuptools at run time.
    missing = _closure(requirements) - set(_lock()) - PACKAGING_TOOLS
    assert not missing, f"not pinned by requirements.lock: {sorted(missing)}"


@pytest.mark.parametrize("name", ["control-plane", "inference"])
def test_image_requirements_cover_every_import_of_the_shipped_code(name: str) -> None:
    installed = _closure(_requirements_in(name))
    imports = _third_party_imports(IMAGE_CODE[name]()) | RUNTIME_MODULES[name]
    if name == "control-plane":
        settings_modules = _settings_modules()
        assert {"whitenoise", "axes", "rest_framework"} <= settings_modules, "the settings scan works"
        imports |= settings_modules
    assert len(imports) > 5, "the scan found the code"
    uncovered = {
        module: dists
        for module, dists in _distributions_of(imports - OPTIONAL_IMPORTS.get(name, set())).items()
        if not dists & installed
    }
    assert not uncovered, f"{name} image lacks the packages of these imports: {uncovered}"


def test_control_plane_image_leaves_the_model_stack_out() -> None:
    installed = _closure(_requirements_in("control-plane"))
    assert not installed & {"torch", "transformers", "vllm"}


def test_gpu_image_installs_the_vllm_extra() -> None:
    args, _ = parse_dockerfile("inference-gpu")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [args["VLLM_REQUIREMENT"]] == project["optional-dependencies"]["vllm"]
    text = (DOCKER_DIR / "inference-gpu.Dockerfile").read_text()
    assert '"${VLLM_REQUIREMENT}"' in text
    assert "nvidia/cuda:" in args["CUDA_IMAGE"]


def test_cpu_image_takes_torch_from_the_cpu_index_at_the_locked_version() -> None:
    args, stages = parse_dockerfile("inference-cpu")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    runs = " ".join(rest for s in stages for i, rest in s.instructions if i == "RUN")
    assert "sed -n 's/^torch==//p' /tmp/requirements.lock" in runs
    assert "torch" in _lock()


# --- the images' build steps, run against exactly what they copy ---------------------------------------


def _copy_into(image: str, stage: Stage, target: Path) -> None:
    """Carry out a stage's COPY instructions from the build context (ignore file applied)."""
    workdir = target
    for instruction, rest in stage.instructions:
        if instruction == "WORKDIR":
            workdir = target / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        if instruction != "COPY":
            continue
        sources, flags = _copy_sources(rest)
        if "from" in flags:
            continue
        destination = shlex.split(rest)[-1]
        for source in sources:
            origin = ROOT / source
            files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if not in_build_context(image, relative):
                    continue
                if origin.is_file():
                    dest = workdir / destination / file.name if destination.endswith("/") else workdir / destination
                    if destination.startswith("/"):
                        continue  # outside the application directory (e.g. /tmp, /usr/local/bin)
                else:
                    dest = workdir / destination / file.relative_to(origin)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, dest)


def _venv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in {"HOME", "LANG"}}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return env


def test_control_plane_app_stage_builds_from_what_the_image_copies(tmp_path: Path) -> None:
    """The app stage's RUN (dashboard assets, collectstatic, compileall) works on the copied files alone."""
    _, stages = parse_dockerfile("control-plane")
    (app,) = [s for s in stages if s.name == "app"]
    _copy_into("control-plane", app, tmp_path)
    assert not (tmp_path / "app" / "frontend" / "node_modules").exists(), "node_modules comes from the npm stage"
    # Stand-in for `COPY --from=assets ... node_modules`: the same npm ci result, from this checkout.
    modules = ROOT / "frontend" / "node_modules"
    if not modules.is_dir():
        pytest.skip("frontend/node_modules is missing: run `make setup-frontend`")
    shutil.copytree(modules, tmp_path / "app" / "frontend" / "node_modules")
    (run,) = [rest for instruction, rest in app.instructions if instruction == "RUN"]
    result = subprocess.run(
        ["sh", "-c", run], cwd=tmp_path / "app", env=_venv_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    static = tmp_path / "app" / "staticfiles"
    assert (static / "vendor" / "htmx.min.js").is_file()
    assert (static / "admin").is_dir()
    assert not (tmp_path / "app" / "frontend" / "node_modules").exists()
    check = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=tmp_path / "app",
        env=_venv_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr[-3000:]


def test_inference_image_code_stands_alone(tmp_path: Path) -> None:
    """The inference image copies only inference/: its server imports nothing else from the repository."""
    _, stages = parse_dockerfile("inference-cpu")
    _copy_into("inference-cpu", stages[-1], tmp_path)
    app_dir = tmp_path / "app"
    assert (app_dir / "inference" / "__main__.py").is_file()
    # Import every module (the entry point's `server` and the demo-model builder included); only the
    # GPU adapter may miss its engine, which the CPU image does not install.
    code = f"""
import importlib, pkgutil, sys
sys.path[0] = {str(app_dir)!r}
import inference
names = [m.name for m in pkgutil.walk_packages(inference.__path__, "inference.") if m.name != "inference.__main__"]
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("vllm"):
            raise
assert "inference.server" in names and "inference.demo_model" in names, names
assert all(m.__file__.startswith({str(app_dir)!r}) for n, m in sys.modules.items() if n.startswith("inference"))
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=app_dir, env=_venv_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
