"""Prometheus metrics (prefix mmorch_inference_), labelled by tenant and model.

The tenant label is bounded: the first `max_tenants` tenants a node serves keep their own label for
the life of the process, every later one is counted under `other` (INFERENCE_METRICS_MAX_TENANTS),
so a platform with thousands of tenants cannot blow up Prometheus' series count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


OTHER_TENANTS = "other"


class Metrics:
    """One set per app, on its own registry, so several apps can live in one process (tests)."""

    def __init__(self, *, max_tenants: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.max_tenants = max_tenants
        self._tenants: set[str] = set()
        labels = ("tenant", "model", "model_version")
        self.requests = Counter(
            "mmorch_inference_requests",
            "Requests by outcome (stop, length, aborted, error, rate_limited, overloaded, queue_timeout).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "mmorch_inference_prompt_tokens",
            "Prompt tokens of requests that reached the engine.",
            labels,
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "mmorch_inference_completion_tokens", "Completion tokens generated.", labels, registry=self.registry
        )
        self.queue_time = Histogram(
            "mmorch_inference_queue_time_seconds",
            "Time waiting for an engine slot.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "mmorch_inference_time_to_first_token_seconds",
            "Arrival to first token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "mmorch_inference_inter_token_latency_seconds",
            "Time between consecutive tokens.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "mmorch_inference_e2e_latency_seconds",
            "Arrival to last token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.running = Gauge(
            "mmorch_inference_running_requests", "Requests in the engine, per tenant.", labels, registry=self.registry
        )
        self.waiting = Gauge(
            "mmorch_inference_waiting_requests",
            "Requests waiting for a slot, per tenant.",
            labels,
            registry=self.registry,
        )
        self.batch_size = Gauge(
            "mmorch_inference_batch_size",
            "Requests in the engine's running batch.",
            ("model", "model_version"),
            registry=self.registry,
        )
        self.draining = Gauge("mmorch_inference_draining", "1 while the node drains.", registry=self.registry)
        self._embedding = _EmbeddingPasses()
        self.registry.register(self._embedding)

    def tenant_label(self, tenant: str) -> str:
        """The tenant's label value: its own name while there is room, else `other`."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self.max_tenants:
            self._tenants.add(tenant)
            return tenant
        return OTHER_TENANTS

    def watch_batch(self, model: str, version: str, running: Callable[[], int]) -> None:
        self.batch_size.labels(model, version).set_function(lambda: float(running()))

    def watch_embedding(self, model: str, version: str, counts: Callable[[], tuple[int, int]]) -> None:
        """An embedding engine's (batches, forward passes) so far: how well concurrent requests batch."""
        self._embedding.sources.append((model, version, counts))


class _EmbeddingPasses:
    """Read from the engines at scrape time: they count on their own thread, without a lock."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str, Callable[[], tuple[int, int]]]] = []

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily(
            "mmorch_inference_embedding_batches",
            "Batches the embedding batcher formed.",
            labels=("model", "model_version"),
        )
        passes = CounterMetricFamily(
            "mmorch_inference_embedding_forward_passes",
            "Forward passes of embedding engines (a batch is one or more).",
            labels=("model", "model_version"),
        )
        for model, version, counts in self.sources:
            formed, run = counts()
            batches.add_metric([model, version], formed)
            passes.add_metric([model, version], run)
        yield batches
        yield passes
