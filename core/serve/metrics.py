"""Prometheus metrics of one app, in a registry of its own.

A registry per app (not the process-global one) lets tests and benchmarks start several
servers in one process, and a Ray Serve replica expose exactly its own numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from crossrank.types import RerankReport

#: Latency buckets in seconds, from a cache hit to a deep rerank on a busy CPU.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class _MicroBatchCollector(Collector):
    """Forward groups and requests of the backend's micro-batcher, read when scraped.

    requests / groups is the mean number of requests that shared one forward pass.
    """

    def __init__(self, batcher: Callable[[], Any]) -> None:
        self._batcher = batcher

    def collect(self) -> Iterator[CounterMetricFamily]:
        batcher = self._batcher()
        groups = CounterMetricFamily(
            "crossrank_microbatch_groups", "Forward passes run by the micro-batcher"
        )
        requests = CounterMetricFamily(
            "crossrank_microbatch_requests", "Scoring requests served by the micro-batcher"
        )
        groups.add_metric([], float(getattr(batcher, "groups_run", 0) or 0))
        requests.add_metric([], float(getattr(batcher, "requests_served", 0) or 0))
        yield groups
        yield requests


class ServeMetrics:
    """Every number the server exports; ``render`` is the ``/metrics`` body."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, micro_batcher: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "crossrank_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "crossrank_request_seconds",
            "Time from admission to response, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "crossrank_stage_seconds",
            "Time spent in each stage: queue (waiting for a slot) and the engine's stages",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "crossrank_queue_depth",
            "Admitted requests waiting for a reranking slot",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "crossrank_in_flight", "Requests reranking now", registry=self.registry
        )
        self.documents = Histogram(
            "crossrank_request_documents",
            "Documents per rerank request (the batch each request brings)",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "crossrank_rerank_outcomes",
            "Rerank results by engine status: reranked, skipped (selective), fallback, empty",
            ["status"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "crossrank_rejections",
            "Requests refused before reranking, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "crossrank_ready", "1 once warm-up succeeded, 0 otherwise", registry=self.registry
        )
        if micro_batcher is not None:
            self.registry.register(_MicroBatchCollector(micro_batcher))

    def observe_result(self, report: RerankReport, queue_seconds: float) -> None:
        self.outcomes.labels(report.status).inc()
        self.stage_latency.labels("queue").observe(queue_seconds)
        for stage, milliseconds in _stages(report.timings_ms).items():
            self.stage_latency.labels(stage).observe(milliseconds / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _stages(timings_ms: Mapping[str, float]) -> Mapping[str, float]:
    return {stage: value for stage, value in timings_ms.items() if value >= 0}
