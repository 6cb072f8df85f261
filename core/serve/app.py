"""The FastAPI app: one engine behind Cohere v2 and TEI rerank endpoints.

Each rerank request goes: authenticate -> read the body within the byte limit -> parse and
validate (400 / 413 naming the field) -> admission (429 when the queue is full) ->
``Reranker.arerank`` -> the format's response. Every client mistake is a 4xx; a 5xx means
the server itself failed. Concurrent requests share forward passes when the backend
micro-batches (``micro_batch=True`` on the cross-encoder backend), because every admitted
request scores at the same time on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from crossrank.engine import Reranker
from crossrank.errors import BackendError, CrossrankError
from crossrank.serve.admission import AdmissionGate, Draining, QueueFull
from crossrank.serve.auth import BearerAuth
from crossrank.serve.metrics import ServeMetrics
from crossrank.serve.settings import ServeSettings
from crossrank.serve.tracing import record_stages, request_span
from crossrank.serve.wire import (
    RequestError,
    RerankRequest,
    cohere_error,
    cohere_response,
    parse_cohere,
    parse_tei,
    report_body,
    tei_error,
    tei_response,
)
from crossrank.types import RerankResult

logger = logging.getLogger("crossrank.serve")

_WARMUP_QUERY = "crossrank warm-up query"
_WARMUP_TEXTS = ["a first warm-up document", "a second, longer warm-up document to score"]


class _Service:
    """The state one app holds: the engine, its limits, readiness and metrics."""

    def __init__(self, reranker: Reranker, settings: ServeSettings) -> None:
        self.reranker = reranker
        self.settings = settings
        self.gate = AdmissionGate(
            max_in_flight=settings.max_in_flight, max_queue=settings.max_queue
        )
        self.auth = BearerAuth(settings.api_keys)
        self.metrics = ServeMetrics(micro_batcher=lambda: _micro_batcher_of(reranker.backend))
        self.ready = False
        self.warmup_error: str | None = None
        self.model_name = (
            settings.model_name or reranker.backend.model_name or reranker.backend.name
        )

    async def warm_up(self) -> None:
        """Score once through the backend (loading the model), retrying until it works."""
        while True:
            try:
                await asyncio.to_thread(self.reranker.backend.score, _WARMUP_QUERY, _WARMUP_TEXTS)
                await self.reranker.arerank(_WARMUP_QUERY, _WARMUP_TEXTS)
            except Exception as exc:
                self.warmup_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "crossrank serve: warm-up failed (%s); retrying in %.1fs",
                    self.warmup_error,
                    self.settings.warmup_retry_s,
                )
                await asyncio.sleep(self.settings.warmup_retry_s)
                continue
            self.warmup_error = None
            self.ready = True
            self.metrics.ready.set(1)
            logger.info("crossrank serve: warm, serving %s", self.model_name)
            return


def _micro_batcher_of(backend: Any) -> Any:
    """The backend's running micro-batcher, wherever this version of crossrank keeps it."""
    found = getattr(backend, "micro_batcher", None)
    if found is not None:
        return found
    try:
        from crossrank.backends.wrappers import find_micro_batcher
    except ImportError:
        return getattr(backend, "_batcher", None)
    return find_micro_batcher(backend)


def create_app(
    reranker: Reranker | Callable[[], Reranker],
    settings: ServeSettings | None = None,
    *,
    warm_up: bool = True,
    block_until_warm: bool = False,
) -> FastAPI:
    """The serving app for ``reranker`` (or a factory called once, at startup).

    With ``warm_up=False`` the app reports ready at once (for backends with nothing to load).
    ``block_until_warm`` finishes startup only once warm: for Ray Serve, which routes to a
    replica as soon as its startup is done and never asks ``/ready``.
    """
    settings = settings or ServeSettings()
    holder: dict[str, _Service] = {}

    def service() -> _Service:
        return holder["service"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = reranker if isinstance(reranker, Reranker) else reranker()
        state = _Service(engine, settings)
        holder["service"] = state
        app.state.crossrank = state
        loop = asyncio.get_running_loop()
        # Blocking backends score in threads: one per reranking slot, so admitted requests
        # really run together (and meet in the micro-batcher) instead of queueing for threads.
        executor = ThreadPoolExecutor(
            max_workers=settings.max_in_flight + 2, thread_name_prefix="crossrank-serve"
        )
        loop.set_default_executor(executor)
        warming: asyncio.Task[None] | None = None
        if warm_up and block_until_warm:
            await state.warm_up()
        elif warm_up:
            warming = asyncio.create_task(state.warm_up())
        else:
            state.ready = True
            state.metrics.ready.set(1)
        try:
            yield
        finally:
            state.ready = False
            state.metrics.ready.set(0)
            drained = await state.gate.drain(settings.drain_timeout_s)
            if not drained:
                logger.warning(
                    "crossrank serve: %d requests still running after %.0fs of draining",
                    state.gate.admitted,
                    settings.drain_timeout_s,
                )
            if warming is not None:
                warming.cancel()
            close = getattr(engine.backend, "close", None)
            if callable(close):
                await asyncio.to_thread(close)
            executor.shutdown(wait=False)

    app = FastAPI(
        title="crossrank",
        description="Second-stage reranking: Cohere v2 and Text Embeddings Inference formats.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        state = service()
        if state.ready:
            return JSONResponse({"status": "ready", "model": state.model_name})
        status = "draining" if state.gate.draining else "warming"
        body: dict[str, Any] = {"status": status}
        if state.warmup_error is not None:
            body["error"] = state.warmup_error
        return JSONResponse(
            body, status_code=503, headers={"Retry-After": str(settings.retry_after_s)}
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        state = service()
        state.metrics.queue_depth.set(state.gate.waiting)
        state.metrics.in_flight.set(state.gate.running)
        return Response(state.metrics.render(), media_type=ServeMetrics.content_type)

    @app.post("/v2/rerank")
    async def cohere_rerank(request: Request) -> Response:
        return await _handle(
            service(),
            request,
            endpoint="/v2/rerank",
            parse=parse_cohere,
            respond=_cohere_body,
            error_body=cohere_error,
        )

    @app.post("/rerank")
    async def tei_rerank(request: Request) -> Response:
        return await _handle(
            service(),
            request,
            endpoint="/rerank",
            parse=parse_tei,
            respond=lambda parsed, result: tei_response(parsed, result),
            error_body=tei_error,
        )

    return app


def _cohere_body(parsed: RerankRequest, result: RerankResult) -> Any:
    warnings = []
    if parsed.max_tokens_per_doc is not None:
        warnings.append(
            "max_tokens_per_doc is not applied per request: crossrank reads long documents "
            "in windows as configured on the server"
        )
    return cohere_response(parsed, result, warnings=warnings)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        raise RequestError(400, "the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply") from None


async def _handle(
    state: _Service,
    request: Request,
    *,
    endpoint: str,
    parse: Callable[..., RerankRequest],
    respond: Callable[[RerankRequest, RerankResult], Any],
    error_body: Callable[[RequestError], Any],
) -> Response:
    settings = state.settings
    started = time.perf_counter()

    def refuse(error: RequestError, reason: str, headers: dict[str, str] | None = None) -> Response:
        state.metrics.rejections.labels(reason).inc()
        state.metrics.requests.labels(endpoint, str(error.status)).inc()
        return JSONResponse(error_body(error), status_code=error.status, headers=headers)

    retry = {"Retry-After": str(settings.retry_after_s)}
    if not state.auth.allows(request.headers.get("authorization")):
        return refuse(
            RequestError(401, "missing or invalid bearer token"),
            "unauthorized",
            {"WWW-Authenticate": "Bearer"},
        )
    if not state.ready:
        reason = "draining" if state.gate.draining else "warming up"
        return refuse(RequestError(503, f"the server is {reason}"), "not_ready", retry)
    try:
        parsed = parse(
            _decode(await _read_body(request, settings.max_body_bytes)),
            max_documents=settings.max_documents,
        )
    except RequestError as error:
        return refuse(error, "too_large" if error.status == 413 else "invalid")
    state.metrics.documents.observe(len(parsed.documents))

    with request_span(endpoint, len(parsed.documents)) as span:
        try:
            result, waited = await state.gate.run(
                lambda: state.reranker.arerank(
                    parsed.query, parsed.candidates(), top_n=parsed.top_n
                )
            )
        except QueueFull:
            return refuse(
                RequestError(429, "the server is at capacity; retry after the given seconds"),
                "queue_full",
                retry,
            )
        except Draining:
            return refuse(RequestError(503, "the server is shutting down"), "draining", retry)
        except BackendError as exc:  # strict engines only: a failure of ours, not the client's
            logger.warning("crossrank serve: backend failed: %s", exc)
            state.metrics.requests.labels(endpoint, "502").inc()
            return JSONResponse(
                error_body(RequestError(502, f"the reranking backend failed: {exc}")),
                status_code=502,
            )
        except CrossrankError as exc:  # the engine refused the input (e.g. an empty query)
            return refuse(RequestError(400, str(exc)), "invalid")
        record_stages(span, result.report.timings_ms, result.report.status)

    state.metrics.observe_result(result.report, waited)
    state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    state.metrics.requests.labels(endpoint, "200").inc()
    headers: dict[str, str] = {"X-Crossrank-Status": result.report.status}
    if parsed.report and endpoint == "/rerank":
        # TEI's body is a bare list with no room for it, so the report travels as a header.
        headers["X-Crossrank-Report"] = json.dumps(
            report_body(result.report), separators=(",", ":")
        )
    return JSONResponse(respond(parsed, result), headers=headers)
