"""Prometheus metrics for one server (its own CollectorRegistry: no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelcrate_requests",
            "Inference requests by model, the version that answered (or was asked for), and "
            "HTTP status.",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelcrate_request_latency_seconds",
            "Inference request latency by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelcrate_batch_size",
            "Rows per model call after batching.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelcrate_queue_depth",
            "Requests waiting for a batch.",
            ["model"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "modelcrate_requests_rejected",
            "Inference requests refused before running, by model and reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.cache = Counter(
            "modelcrate_cache_requests",
            "Response cache lookups (serve --cache-size) by model and result (hit, miss).",
            ["model", "result"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "modelcrate_model_swaps",
            "Model version loads/swaps by outcome.",
            ["model", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
