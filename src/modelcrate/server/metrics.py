"""Prometheus metrics for one server (its own CollectorRegistry: no process globals)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Requests(Collector):
    """Inference requests counted by model, version and status, with their latency: plain
    Python numbers, turned into Prometheus metrics (``modelcrate_requests_total``,
    ``modelcrate_request_latency_seconds``) only when they are scraped. Counting each
    request in prometheus_client's Counter and Histogram took a lock per sample and walked
    the buckets in Python: ~10% of the time a small model's request takes. Counted on the
    event loop only (REST and gRPC both serve from it), so no lock is needed."""

    def __init__(self) -> None:
        self.codes: dict[tuple[str, str, int], list[float]] = {}  # -> [count, created]
        self.latency: dict[tuple[str, str], list[float]] = {}  # -> bucket counts, then sum

    def record(self, model: str, version: str, status: int, seconds: float) -> None:
        count = self.codes.get((model, version, status))
        if count is None:
            count = self.codes[(model, version, status)] = [0, time.time()]
        count[0] += 1
        buckets = self.latency.get((model, version))
        if buckets is None:
            buckets = self.latency[(model, version)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the last is +Inf's
        buckets[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelcrate_requests",
            "Inference requests by model, the version that answered (or was asked for), and "
            "HTTP status.",
            labels=["model", "version", "code"],
        )
        for (model, version, status), (count, created) in self.codes.items():
            requests.add_metric([model, version, str(status)], count, created=created)
        latency = HistogramMetricFamily(
            "modelcrate_request_latency_seconds",
            "Inference request latency by model and version.",
            labels=["model", "version"],
        )
        bounds = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for labels, counts in self.latency.items():
            cumulative, total = [], 0.0
            for bound, count in zip(bounds, counts, strict=False):
                total += count
                cumulative.append((bound, total))
            latency.add_metric(list(labels), cumulative, sum_value=counts[-1])
        yield requests
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The process's own figures, as in prometheus_client's default registry: memory,
        # CPU, open files (process_*), garbage collections (python_gc_*), Python version.
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            self.registry.register(collector)
        self.requests = Requests()
        self.registry.register(self.requests)
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
