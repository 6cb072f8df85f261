"""A local HTTP server that speaks the rerank wire format of every provider crossrank knows.

The real ``cohere`` SDK and real httpx clients talk to it over TCP on 127.0.0.1 (ephemeral
port), so tests exercise the actual wire formats, headers and failure modes rather than
mocks. Scores are a deterministic function of (query, document), so a caller can check that
every result came back, in the right place.

Faults are queued with :meth:`FakeRerankServer.fail_next` (consumed one per request, in
order) or drawn at a fixed rate (``rate_429``, seeded): HTTP errors with any body and
``Retry-After``, slow answers, dropped connections, bodies cut short, malformed JSON, wrong,
duplicate or missing indices and NaN scores.

Request and response bodies follow the providers' API references (see :data:`WIRES`):

* Cohere ``POST /v2/rerank`` ``{"model", "query", "documents": [str], "top_n"?,
  "max_tokens_per_doc"?}`` -> ``{"id", "results": [{"index", "relevance_score"}], "meta"}``;
  errors are ``{"id", "message"}``. A Cohere-compatible server (vLLM, Infinity) answers the
  same at ``/compat/v1/rerank``, without requiring ``model``.
* Jina ``POST /v1/rerank`` ``{"model", "query", "documents": [str], "top_n"?,
  "return_documents"?}`` -> ``{"model", "usage": {"total_tokens"}, "results": [{"index",
  "relevance_score", "document"?: {"text"}}]}``; errors are ``{"detail"}``.
* Text Embeddings Inference ``POST /tei/rerank`` ``{"query", "texts": [str], "raw_scores"?,
  "truncate"?, "return_text"?}`` -> ``[{"index", "score", "text"?}]``; errors are
  ``{"error", "error_type"}``, 413 past the batch size.
* Voyage ``POST /voyage/v1/rerank`` ``{"model", "query", "documents", "top_k"?,
  "return_documents"?, "truncation"?}`` -> ``{"object": "list", "data": [{"index",
  "relevance_score"}], "model", "usage"}``; errors are ``{"detail"}``.
* Mixedbread ``POST /mixedbread/v1/reranking`` ``{"model", "query", "input": [str],
  "top_k"?, "return_input"?}`` -> ``{"object": "list", "data": [{"index", "score",
  "object": "rank_result"}], "model", "usage"}``; errors are ``{"detail"}``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from tests.support.loopback import RecordingServer, StatefulServer

COHERE_PATH = "/v2/rerank"
JINA_PATH = "/v1/rerank"


@dataclass(frozen=True)
class Wire:
    """One provider's format, as the fake server speaks it."""

    path: str
    #: What a client gives as base_url (the part of ``path`` the client does not append).
    base_path: str
    documents_field: str
    required: tuple[str, ...]
    #: None: the answer is the bare list of results.
    results_field: str | None
    score_field: str
    top_field: str | None
    #: Status for a request over the server's document limit.
    too_many_status: int
    error_shape: str  # "message" | "detail" | "error"


WIRES: dict[str, Wire] = {
    "cohere": Wire(COHERE_PATH, "", "documents", ("model", "query", "documents"), "results",
                   "relevance_score", "top_n", 400, "message"),
    "jina": Wire(JINA_PATH, "/v1", "documents", ("query", "documents"), "results",
                 "relevance_score", "top_n", 422, "detail"),
    "cohere-compatible": Wire("/compat/v1/rerank", "/compat/v1", "documents",
                              ("query", "documents"), "results", "relevance_score", "top_n",
                              400, "message"),
    "tei": Wire("/tei/rerank", "/tei", "texts", ("query", "texts"), None, "score", None, 413,
                "error"),
    "voyage": Wire("/voyage/v1/rerank", "/voyage/v1", "documents",
                   ("model", "query", "documents"), "data", "relevance_score", "top_k", 400,
                   "detail"),
    "mixedbread": Wire("/mixedbread/v1/reranking", "/mixedbread/v1", "input",
                       ("model", "query", "input"), "data", "score", "top_k", 400, "detail"),
}  # fmt: skip
PROVIDERS = tuple(WIRES)
_BY_PATH = {wire.path: name for name, wire in WIRES.items()}
STATS_PATH = "/_stats"
RESET_PATH = "/_reset"

FaultKind = Literal[
    "status",  # answer `status` with `body` (JSON error body by default) and `retry_after`
    "slow",  # wait `delay` seconds, then answer normally
    "disconnect",  # close the connection without answering
    "truncated",  # announce the full Content-Length, send half the body, close
    "malformed",  # 200 with a complete body that is not valid JSON
    "wrong_index",  # one result points past the end of the documents
    "duplicate_index",  # two results share an index
    "missing_index",  # one result is left out
    "nan_score",  # one relevance_score is NaN
    "drip",  # announce the full body, then send it in `chunks` pieces `delay` seconds apart
    "echo_headers",  # answer normally, echoing the Authorization header (and the bare key)
]


def deterministic_score(query: str, document: str) -> float:
    """A relevance score in [0, 1) that depends only on (query, document)."""
    digest = hashlib.sha256(f"{query}\x00{document}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def expected_scores(query: str, documents: list[str]) -> list[float]:
    """What a correct client must return for ``documents``, in input order."""
    return [deterministic_score(query, document) for document in documents]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one request."""

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    body: str | None = None
    #: Put the request's Authorization header into the error body (a leaky proxy).
    echo_authorization: bool = False
    #: For "drip": how many pieces the body is sent in.
    chunks: int = 8


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float


@dataclass
class _State:
    api_key: str | None
    latency: float
    rate_429: float
    retry_after_429: str | None
    max_documents: int | None
    random: random.Random
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm on, each answer
    # would wait for the client's delayed ACK (~40 ms on loopback) and distort latencies.
    disable_nagle_algorithm = True
    server: StatefulServer

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
        pass

    # -- plumbing -------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(
        self, provider: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        shape = WIRES[provider].error_shape
        if shape == "message":
            payload: dict[str, Any] = {"id": str(uuid.uuid4()), "message": message}
        elif shape == "error":
            payload = {"error": message, "error_type": "Validation"}
        else:
            payload = {"detail": message}
        self._send_json(status, payload, headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(2)
        except OSError:
            pass

    # -- the endpoint ---------------------------------------------------------------------

    def do_GET(self) -> None:
        """``GET /_stats``: counters for a server running in another process."""
        state = self.server.state
        if self.path != STATS_PATH:
            self._send_json(404, {"message": f"no route {self.path}"})
            return
        with state.lock:
            stats = {"requests": len(state.requests), "max_in_flight": state.max_in_flight}
        self._send_json(200, stats)

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == RESET_PATH:
            with state.lock:
                state.faults.clear()
                state.requests.clear()
                state.max_in_flight = state.in_flight
            self._send_json(200, {"reset": True})
            return
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with state.lock:
            state.requests.append(
                RecordedRequest(self.path, dict(self.headers.items()), body, time.monotonic())
            )
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._handle(state, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout or cancellation): nothing to answer
        finally:
            with state.lock:
                state.in_flight -= 1

    def _handle(self, state: _State, body: Any) -> None:
        provider = _BY_PATH.get(self.path)
        if provider is None:
            self._send_json(404, {"message": f"no route {self.path}"})
            return
        if state.latency:
            time.sleep(state.latency)
        if state.api_key is not None and (
            self.headers.get("Authorization") != f"Bearer {state.api_key}"
        ):
            self._error(provider, 401, "invalid api token")
            return
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            if fault is None and state.rate_429 and state.random.random() < state.rate_429:
                fault = Fault("status", status=429, retry_after=state.retry_after_429)
        if fault is not None and fault.kind == "status":
            self._status_fault(provider, fault)
            return
        if fault is not None and fault.kind == "disconnect":
            self._drop()
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        problem = _invalid_request(provider, body, state.max_documents)
        if problem is not None:
            wire = WIRES[provider]
            too_many = problem.startswith("too many")
            other_status = 400 if wire.error_shape == "message" else 422
            self._error(provider, wire.too_many_status if too_many else other_status, problem)
            return
        payload = _answer(provider, body)
        if fault is not None and fault.kind in _CONTENT_FAULTS:
            _CONTENT_FAULTS[fault.kind](_results_of(provider, payload))
        encoded = json.dumps(payload).encode()  # NaN is written as the token NaN
        if fault is not None and fault.kind == "drip":
            self._drip(encoded, fault)
            return
        if fault is not None and fault.kind == "echo_headers":
            auth = self.headers.get("Authorization") or ""
            echoed = {"Authorization": auth, "X-Upstream-Key": auth.removeprefix("Bearer ")}
            self._send_bytes(200, encoded, echoed)
            return
        if fault is not None and fault.kind == "malformed":
            self._send_bytes(200, encoded[: max(len(encoded) // 2, 1)])
            return
        if fault is not None and fault.kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded[: len(encoded) // 2])
            self._drop()
            return
        self._send_bytes(200, encoded)

    def _drip(self, encoded: bytes, fault: Fault) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.flush()
        size = max(1, -(-len(encoded) // max(fault.chunks, 1)))
        for start in range(0, len(encoded), size):
            time.sleep(fault.delay)
            self.wfile.write(encoded[start : start + size])
            self.wfile.flush()

    def _status_fault(self, provider: str, fault: Fault) -> None:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body is not None:
            self._send_bytes(fault.status, fault.body.encode(), headers, content_type="text/html")
            return
        message = {429: "too many requests", 500: "internal server error"}.get(
            fault.status, f"error {fault.status}"
        )
        if fault.echo_authorization:
            message += f" (request had Authorization: {self.headers.get('Authorization')})"
        self._error(provider, fault.status, message, headers)


def _invalid_request(provider: str, body: Any, max_documents: int | None) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    wire = WIRES[provider]
    for required in wire.required:
        if required not in body:
            return f"missing required field {required!r}"
    if not isinstance(body.get("model", ""), str) or not isinstance(body["query"], str):
        return "model and query must be strings"
    documents = body[wire.documents_field]
    if not isinstance(documents, list) or not documents:
        return "documents must be a non-empty list"
    if not all(isinstance(document, str) for document in documents):
        return "documents must be strings"
    if max_documents is not None and len(documents) > max_documents:
        return f"too many documents: {len(documents)} > {max_documents}"
    top_n = body.get(wire.top_field) if wire.top_field else None
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        return f"{wire.top_field} must be a positive integer"
    tokens = body.get("max_tokens_per_doc")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        return "max_tokens_per_doc must be a positive integer"
    return None


def _answer(provider: str, body: dict[str, Any]) -> Any:
    wire = WIRES[provider]
    query: str = body["query"]
    documents: list[str] = body[wire.documents_field]
    ranked = sorted(
        range(len(documents)),
        key=lambda index: -deterministic_score(query, documents[index]),
    )
    if wire.top_field and body.get(wire.top_field) is not None:
        ranked = ranked[: body[wire.top_field]]
    results: list[dict[str, Any]] = []
    for index in ranked:
        result: dict[str, Any] = {
            "index": index,
            wire.score_field: deterministic_score(query, documents[index]),
        }
        if provider == "jina" and body.get("return_documents", True):
            result["document"] = {"text": documents[index]}
        if provider == "tei" and body.get("return_text"):
            result["text"] = documents[index]
        if provider == "mixedbread":
            result["object"] = "rank_result"
        results.append(result)
    tokens = sum(len(document.split()) for document in documents) + len(query.split())
    if provider in ("cohere", "cohere-compatible"):
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }
    if provider == "jina":
        return {"model": body.get("model"), "usage": {"total_tokens": tokens}, "results": results}
    if provider == "tei":
        return results
    return {
        "object": "list",
        "data": results,
        "model": body.get("model"),
        "usage": {"total_tokens": tokens},
    }


def _results_of(provider: str, payload: Any) -> list[dict[str, Any]]:
    field = WIRES[provider].results_field
    return payload if field is None else payload[field]  # type: ignore[no-any-return]


def _wrong_index(results: list[dict[str, Any]]) -> None:
    results[0]["index"] = len(results) + 5


def _duplicate_index(results: list[dict[str, Any]]) -> None:
    if len(results) > 1:
        results[1]["index"] = results[0]["index"]


def _missing_index(results: list[dict[str, Any]]) -> None:
    results.pop()


def _nan_score(results: list[dict[str, Any]]) -> None:
    score_field = "relevance_score" if "relevance_score" in results[-1] else "score"
    results[-1][score_field] = float("nan")


_CONTENT_FAULTS = {
    "wrong_index": _wrong_index,
    "duplicate_index": _duplicate_index,
    "missing_index": _missing_index,
    "nan_score": _nan_score,
}


class FakeRerankServer(RecordingServer["_State"]):
    """Rerank endpoints of every known provider on 127.0.0.1, in a background thread.

    ``api_key=None`` serves without checking a key, as self-hosted servers often do.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        latency: float = 0.0,
        rate_429: float = 0.0,
        retry_after_429: str | None = "0",
        max_documents: int | None = None,
        seed: int = 0,
    ) -> None:
        state = _State(
            api_key=api_key,
            latency=latency,
            rate_429=rate_429,
            retry_after_429=retry_after_429,
            max_documents=max_documents,
            random=random.Random(seed),
        )
        super().__init__(_Handler, state)

    # -- addresses ------------------------------------------------------------------------

    @property
    def cohere_base_url(self) -> str:
        """What to give the Cohere SDK as ``base_url`` (it appends ``/v2/rerank``)."""
        return self.url

    @property
    def jina_base_url(self) -> str:
        """What to give the Jina backend as ``base_url`` (it appends ``/rerank``)."""
        return f"{self.url}/v1"

    def base_url(self, provider: str) -> str:
        """What to give ``provider``'s backend as ``base_url`` to reach this server."""
        return self.url + WIRES[provider].base_path

    def client_options(self, provider: str) -> dict[str, Any]:
        """``api_key`` and ``base_url`` that point a crossrank backend at this server."""
        return {"api_key": self._state.api_key, "base_url": self.base_url(provider)}

    # -- behaviour ------------------------------------------------------------------------

    def configure(
        self,
        *,
        latency: float | None = None,
        rate_429: float | None = None,
        retry_after_429: str | None = None,
        max_documents: int | None = None,
    ) -> None:
        with self._state.lock:
            if latency is not None:
                self._state.latency = latency
            if rate_429 is not None:
                self._state.rate_429 = rate_429
            if retry_after_429 is not None:
                self._state.retry_after_429 = retry_after_429
            if max_documents is not None:
                self._state.max_documents = max_documents

    @property
    def in_flight(self) -> int:
        with self._state.lock:
            return self._state.in_flight

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)


def main() -> None:
    """Serve in the foreground (for benchmarks that keep the server out of their process).

    Prints the base URL on the first line of stdout, then serves until stdin closes.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="local rerank server in every provider's format")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--retry-after", default="0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    server = FakeRerankServer(
        api_key=args.api_key,
        latency=args.latency,
        rate_429=args.rate_429,
        retry_after_429=args.retry_after,
        seed=args.seed,
    )
    with server:
        print(server.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin to stop us


if __name__ == "__main__":
    main()
