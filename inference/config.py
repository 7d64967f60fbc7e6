"""Node configuration: environment variables and an optional YAML file, validated at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad field."""


class EngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=1, le=4096)
    max_tokens: int = Field(default=512, ge=1, description="most completion tokens one request may ask for")
    device: str = Field(default="cpu", min_length=1)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    threads: int = Field(default=0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    # Embedding models: how long the first waiting request holds a batch open for others to join.
    batch_window_ms: float = Field(default=2.0, ge=0, le=1000)
    # Passed through to vLLM's AsyncEngineArgs (for example gpu_memory_utilization).
    vllm_args: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(default="v1", min_length=1, max_length=200)
    path: Path
    # "embedding": a sentence encoder served on /v1/embeddings (inference/engine/embedding_engine.py).
    engine: Literal["torch", "vllm", "embedding"] = "torch"
    default: bool = False
    options: EngineOptions = Field(default_factory=EngineOptions)

    @field_validator("path")
    @classmethod
    def _path_is_model_dir(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(f"{value} is not a model directory (no config.json)")
        return value


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    shared_secrets: list[str] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    scheduler: Literal["fair", "fcfs"] = "fair"
    reserve_slots: int = Field(
        default=1, ge=0, description="engine slots one tenant may not fill while others are active"
    )
    reserve_window_s: float = Field(default=30.0, ge=0)
    global_queue_cap: int = Field(default=256, ge=0, description="waiting requests on the node; 0 = no cap")
    queue_timeout_s: float = Field(default=30.0, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    journal_path: Path = Path("var/inference/journal.sqlite3")
    journal_retention_days: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    signature_max_skew_s: int = Field(
        default=15, ge=1, le=300, description="how old (or early) a signed request may be; replays inside are refused"
    )
    replay_cache_size: int = Field(default=200_000, ge=1, description="signed attempt ids remembered at most")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # json or console (wire/logs.py); anything else warns once and logs as console.
    log_format: str = "console"
    # This node in log lines ("" = host name and port); the name it is registered under reads best.
    node_name: str = Field(default="", max_length=200)
    access_log: bool = False  # uvicorn's line per HTTP request (the node logs each generation anyway)
    # /metrics asks for this bearer token; without one it answers 404 unless metrics_public is set
    # (the node has no development mode of its own, so open metrics are a choice, not a default).
    metrics_token: str = Field(default="", repr=False)
    metrics_public: bool = False
    # Tenants with their own label on the node's metrics; later ones are counted under `other`.
    metrics_max_tenants: int = Field(default=100, ge=0)

    @field_validator("shared_secrets")
    @classmethod
    def _secrets_non_empty(cls, value: list[str]) -> list[str]:
        cleaned = [s.strip() for s in value if s.strip()]
        if not cleaned:
            raise ValueError("at least one non-empty secret is required")
        return cleaned

    @model_validator(mode="after")
    def _unique_versions(self) -> NodeConfig:
        seen: set[tuple[str, str]] = set()
        for spec in self.models:
            key = (spec.name, spec.version)
            if key in seen:
                raise ValueError(f"model {spec.name} version {spec.version} is listed twice")
            seen.add(key)
        return self

    def default_version(self, name: str) -> str | None:
        versions = [m for m in self.models if m.name == name]
        if not versions:
            return None
        marked = [m for m in versions if m.default]
        return (marked[0] if marked else versions[0]).version


# Environment variable -> (section, field). Engine options apply to the single env-defined model,
# and fill in options that the YAML file leaves out.
NODE_ENV = {
    "INFERENCE_HOST": "host",
    "INFERENCE_PORT": "port",
    "INFERENCE_SCHEDULER": "scheduler",
    "INFERENCE_RESERVE_SLOTS": "reserve_slots",
    "INFERENCE_RESERVE_WINDOW_S": "reserve_window_s",
    "INFERENCE_GLOBAL_QUEUE_CAP": "global_queue_cap",
    "INFERENCE_QUEUE_TIMEOUT_S": "queue_timeout_s",
    "INFERENCE_DRAIN_TIMEOUT_S": "drain_timeout_s",
    "INFERENCE_JOURNAL_PATH": "journal_path",
    "INFERENCE_JOURNAL_RETENTION_DAYS": "journal_retention_days",
    "INFERENCE_MAX_BODY_BYTES": "max_body_bytes",
    "INFERENCE_SIGNATURE_MAX_SKEW_S": "signature_max_skew_s",
    "INFERENCE_REPLAY_CACHE_SIZE": "replay_cache_size",
    "INFERENCE_LOG_LEVEL": "log_level",
    "MMORCH_LOG_FORMAT": "log_format",
    "INFERENCE_NODE_NAME": "node_name",
    "INFERENCE_ACCESS_LOG": "access_log",
    "INFERENCE_METRICS_TOKEN": "metrics_token",
    "INFERENCE_METRICS_PUBLIC": "metrics_public",
    "INFERENCE_METRICS_MAX_TENANTS": "metrics_max_tenants",
}
OPTION_ENV = {
    "INFERENCE_MAX_BATCH_SIZE": "max_batch_size",
    "INFERENCE_MAX_TOKENS": "max_tokens",
    "INFERENCE_DEVICE": "device",
    "INFERENCE_DTYPE": "dtype",
    "INFERENCE_THREADS": "threads",
    "INFERENCE_BATCH_WINDOW_MS": "batch_window_ms",
}
MODEL_ENV = {
    "INFERENCE_MODEL_NAME": "name",
    "INFERENCE_MODEL_VERSION": "version",
    "INFERENCE_MODEL_PATH": "path",
    "INFERENCE_ENGINE": "engine",
}


def _describe(exc: ValidationError, *, prefix: str = "") -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"{prefix}{where}: {error['msg']}")
    return "invalid inference configuration:\n  " + "\n  ".join(lines)


def load_config(environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Build the node configuration; raises ConfigError naming each bad field."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    config_path = env.get("INFERENCE_CONFIG", "").strip()
    if config_path:
        try:
            loaded = yaml.safe_load(Path(config_path).read_text())
        except OSError as exc:
            raise ConfigError(f"INFERENCE_CONFIG: cannot read {config_path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"INFERENCE_CONFIG: {config_path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"INFERENCE_CONFIG: {config_path} must hold a mapping at the top level")
        data = dict(loaded or {})
    for var, field in NODE_ENV.items():
        if env.get(var, "") != "":
            data[field] = env[var]
    if env.get("INFERENCE_SHARED_SECRET", "") != "":
        data["shared_secrets"] = env["INFERENCE_SHARED_SECRET"].split(",")
    elif isinstance(data.get("shared_secret"), str):
        data["shared_secrets"] = [data.pop("shared_secret")]
    env_options = {field: env[var] for var, field in OPTION_ENV.items() if env.get(var, "") != ""}
    if not data.get("models"):
        model: dict[str, Any] = {"name": "demo-llama"}
        model.update({field: env[var] for var, field in MODEL_ENV.items() if env.get(var, "") != ""})
        if "path" not in model:
            raise ConfigError(
                "invalid inference configuration:\n"
                "  models: set INFERENCE_MODEL_PATH or list models in INFERENCE_CONFIG"
            )
        data["models"] = [model]
    if env_options and isinstance(data["models"], list):
        merged = []
        for entry in data["models"]:
            if isinstance(entry, dict):
                entry = dict(entry)
                options = entry.get("options") or {}
                if isinstance(options, dict):
                    entry["options"] = {**env_options, **options}
            merged.append(entry)
        data["models"] = merged
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
