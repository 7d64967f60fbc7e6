"""Configuration: environment variables, the YAML file, and errors that name the bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference.config import ConfigError, load_config
from tests.support.inference_node import REPO_ROOT


def test_single_model_from_environment(demo_model: Path) -> None:
    config = load_config(
        {
            "INFERENCE_SHARED_SECRET": "a, b",
            "INFERENCE_MODEL_PATH": str(demo_model),
            "INFERENCE_MODEL_VERSION": "2025-01",
            "INFERENCE_PORT": "9100",
            "INFERENCE_MAX_BATCH_SIZE": "4",
            "INFERENCE_QUEUE_TIMEOUT_S": "2.5",
            "INFERENCE_SCHEDULER": "fcfs",
        }
    )
    assert config.shared_secrets == ["a", "b"]
    assert config.port == 9100 and config.queue_timeout_s == 2.5 and config.scheduler == "fcfs"
    (model,) = config.models
    assert (model.name, model.version, model.engine) == ("demo-llama", "2025-01", "torch")
    assert model.options.max_batch_size == 4
    assert config.default_version("demo-llama") == "2025-01"


def test_yaml_file_with_environment_overrides(demo_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        f"""
shared_secrets: [from-file]
port: 8200
models:
  - {{name: m, version: v1, path: {demo_model}}}
  - {{name: m, version: v2, path: {demo_model}, default: true, options: {{max_batch_size: 2}}}}
"""
    )
    config = load_config({"INFERENCE_CONFIG": str(path), "INFERENCE_PORT": "8300", "INFERENCE_MAX_BATCH_SIZE": "6"})
    assert config.port == 8300 and config.shared_secrets == ["from-file"]
    assert [m.options.max_batch_size for m in config.models] == [6, 2]  # the file's own value wins
    assert config.default_version("m") == "v2"


def test_example_file_is_valid(demo_model: Path) -> None:
    # The example points at var/demo; only the path differs here.
    import yaml

    data = yaml.safe_load((REPO_ROOT / "config" / "inference.example.yaml").read_text())
    assert data["models"][0]["name"] == "demo-llama"
    data["models"][0]["path"] = str(demo_model)
    from inference.config import NodeConfig

    assert NodeConfig.model_validate(data).models[0].options.max_batch_size == 16


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"INFERENCE_PORT": "http"}, "port"),
        ({"INFERENCE_PORT": "70000"}, "port"),
        ({"INFERENCE_MAX_BATCH_SIZE": "0"}, "models.0.options.max_batch_size"),
        ({"INFERENCE_ENGINE": "tensorrt"}, "models.0.engine"),
        ({"INFERENCE_SCHEDULER": "random"}, "scheduler"),
        ({"INFERENCE_JOURNAL_RETENTION_DAYS": "0"}, "journal_retention_days"),
        ({"INFERENCE_SHARED_SECRET": " , "}, "shared_secrets"),
        ({"INFERENCE_MODEL_PATH": "/nonexistent/model"}, "models.0.path"),
    ],
)
def test_bad_values_name_the_field(demo_model: Path, env: dict[str, str], field: str) -> None:
    base = {"INFERENCE_SHARED_SECRET": "s", "INFERENCE_MODEL_PATH": str(demo_model)}
    with pytest.raises(ConfigError) as error:
        load_config({**base, **env})
    assert f"\n  {field}:" in str(error.value)


def test_missing_model_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="INFERENCE_MODEL_PATH"):
        load_config({"INFERENCE_SHARED_SECRET": "s"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config({"INFERENCE_CONFIG": str(bad)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"INFERENCE_CONFIG": str(tmp_path / "missing.yaml")})


def test_server_refuses_to_start_with_a_clear_message(demo_model: Path) -> None:
    env = {"INFERENCE_SHARED_SECRET": "s", "INFERENCE_MODEL_PATH": str(demo_model), "INFERENCE_PORT": "-1"}
    out = subprocess.run(
        [sys.executable, "-m", "inference"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "port:" in out.stderr and "Traceback" not in out.stderr
