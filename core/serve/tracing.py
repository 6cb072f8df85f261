"""OpenTelemetry spans per request and per engine stage, when the optional API is installed.

Without ``opentelemetry-api`` every call here is a no-op. With it but no SDK configured, the
API's own no-op tracer is used, so tracing costs nothing until an operator installs an
exporter. Stage spans are recorded after the fact from the engine's report timings, which
keeps the engine free of any tracing dependency.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace as _trace
except ImportError:  # optional
    _trace = None  # type: ignore[assignment]

_STAGE_ORDER = ("validate", "selective", "windows", "score", "normalize")


@contextmanager
def request_span(endpoint: str, documents: int) -> Iterator[Any]:
    """A span around one request; yields it (or ``None`` when tracing is unavailable)."""
    if _trace is None:
        yield None
        return
    tracer = _trace.get_tracer("crossrank.serve")
    with tracer.start_as_current_span(
        "crossrank.rerank",
        attributes={"crossrank.endpoint": endpoint, "crossrank.documents": documents},
    ) as span:
        yield span


def record_stages(span: Any, timings_ms: Mapping[str, float], status: str) -> None:
    """Child spans for the engine's stages, laid end to end before now."""
    if _trace is None or span is None:
        return
    span.set_attribute("crossrank.status", status)
    tracer = _trace.get_tracer("crossrank.serve")
    stages = [(name, timings_ms[name]) for name in _STAGE_ORDER if name in timings_ms]
    end_ns = time.time_ns()
    start_ns = end_ns - int(sum(value for _, value in stages) * 1e6)
    context = _trace.set_span_in_context(span)
    for name, milliseconds in stages:
        stage_end = start_ns + int(milliseconds * 1e6)
        child = tracer.start_span(f"crossrank.{name}", context=context, start_time=start_ns)
        child.end(end_time=stage_end)
        start_ns = stage_end
