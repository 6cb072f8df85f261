"""Rerank APIs as data: one :class:`~crossrank.backends.wire.ProviderSpec` per provider.

Every provider here is spoken over plain httpx by :class:`HttpRerankBackend`; what differs
is a URL, the key's environment variables, the request body, where the scores sit in the
answer, and the documents one request may carry. Cohere's own API goes through its SDK
(:mod:`crossrank.backends.cohere`), described by :data:`COHERE` here; the
"cohere-compatible" spec speaks the common part of that format, without Cohere-only
fields, to self-hosted servers the SDK does not fit.

Adding a provider is one spec, one three-line class, a name in ``BACKENDS`` and a
wire-format test (see ``tests/test_providers.py``). Wire formats were checked against each
provider's published API reference; limits are in ``docs/providers.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crossrank.backends.http import RemoteRerankBackend, _LoopSlot
from crossrank.backends.wire import (
    AnswerShape,
    AttemptFailed,
    ProviderSpec,
    RerankRequest,
    error_text,
    failure_from_status,
    failure_from_transport,
    require,
    shared_ssl_context,
)
from crossrank.errors import BackendResponseError

# -- request bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonBody:
    """A request body described by its field names, for the providers whose body is only
    renamed fields and constants: ``documents`` is the name of the document list, ``count``
    (if any) the field asking for every result back, ``constants`` fixed fields.

    ``model`` is sent when the provider takes one; where it is optional (self-hosted
    servers serving one model) it is left out unless given.
    """

    documents: str = "documents"
    count: str | None = None
    model: Literal["required", "optional", "none"] = "required"
    constants: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, request: RerankRequest) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.model == "required" or (self.model == "optional" and request.model is not None):
            body["model"] = request.model
        body["query"] = request.query
        body[self.documents] = request.documents
        if self.count is not None:
            body[self.count] = len(request.documents)
        return {**body, **self.constants}


def cohere_request(request: RerankRequest) -> dict[str, Any]:
    """Cohere v2: every document scored when ``top_n`` is left out; the per-document token
    limit is Cohere's own option, so it is sent too."""
    body: dict[str, Any] = {
        "model": request.model,
        "query": request.query,
        "documents": request.documents,
    }
    if request.max_tokens_per_doc is not None:
        body["max_tokens_per_doc"] = request.max_tokens_per_doc
    return body


# -- the providers ----------------------------------------------------------------------------

COHERE = ProviderSpec(
    name="cohere",
    label="Cohere",
    base_url="https://api.cohere.com",
    path="/v2/rerank",
    key_env=("CO_API_KEY", "COHERE_API_KEY"),  # the SDK's own name first
    build_request=cohere_request,
    max_documents_per_request=1000,  # Cohere's documented per-request maximum
    default_model="rerank-v3.5",
)

COHERE_COMPATIBLE = ProviderSpec(
    name="cohere-compatible",
    label="Cohere-compatible",
    base_url=None,  # the server's address with its path prefix, e.g. http://host:8000/v1
    path="/rerank",
    key_env=(),  # self-hosted servers usually need none; pass api_key= when one does
    # The subset of Cohere's format that vLLM, Infinity, OVMS and LiteLLM all accept, with
    # top_n explicit (vLLM and OVMS read a missing one differently).
    build_request=JsonBody(count="top_n", model="optional"),
    max_documents_per_request=1000,
)

JINA = ProviderSpec(
    name="jina",
    label="Jina",
    base_url="https://api.jina.ai/v1",
    path="/rerank",
    key_env=("JINA_API_KEY",),
    # Every score is needed, and echoing the texts back is wasted bytes.
    build_request=JsonBody(count="top_n", constants={"return_documents": False}),
    # No documented cap; 1,000 keeps bodies and latency where Cohere's cap keeps them.
    max_documents_per_request=1000,
    default_model="jina-reranker-v2-base-multilingual",
    error_fields=("detail", "message", "error"),
)

TEI = ProviderSpec(
    name="tei",
    label="Text Embeddings Inference",
    base_url=None,
    path="/rerank",
    key_env=(),  # TEI checks a key only when started with --api-key
    # Scores through the model's activation (raw_scores off); documents longer than the model
    # reads are truncated rather than refused with 413 (set max_tokens_per_doc to window them).
    build_request=JsonBody(
        documents="texts", model="none", constants={"raw_scores": False, "truncate": True}
    ),
    answer=AnswerShape(results_field=None, score_field="score"),
    max_documents_per_request=32,  # TEI's default --max-client-batch-size
    error_fields=("error", "message"),
)

VOYAGE = ProviderSpec(
    name="voyage",
    label="Voyage AI",
    base_url="https://api.voyageai.com/v1",
    path="/rerank",
    key_env=("VOYAGE_API_KEY",),
    build_request=JsonBody(constants={"return_documents": False}),  # no top_k: all back
    answer=AnswerShape(results_field="data"),
    max_documents_per_request=1000,  # Voyage's documented per-request maximum
    default_model="rerank-2.5",
    error_fields=("detail", "message", "error"),
)

MIXEDBREAD = ProviderSpec(
    name="mixedbread",
    label="Mixedbread",
    base_url="https://api.mixedbread.com/v1",
    path="/reranking",
    key_env=("MXBAI_API_KEY",),
    build_request=JsonBody(documents="input", count="top_k", constants={"return_input": False}),
    answer=AnswerShape(results_field="data", score_field="score"),
    max_documents_per_request=1000,  # no documented cap; the same prudent bound
    default_model="mixedbread-ai/mxbai-rerank-large-v2",
)


# -- one backend for every spec -----------------------------------------------------------------


def _import_httpx() -> Any:
    return require("httpx", package="httpx", extra="http")


class HttpRerankBackend(RemoteRerankBackend[Any]):
    """A rerank API spoken over httpx, as its :class:`ProviderSpec` describes.

    Returns the provider's score per text, in input order. ``max_tokens_per_doc`` makes the
    engine window documents longer than that many approximate tokens (see
    :func:`crossrank.backends.http.approximate_token_spans`) instead of leaving the cut to
    the provider.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "provider" in cls.__dict__:
            cls.name = cls.provider.name

    def _require_dependencies(self) -> None:
        _import_httpx()

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}{self.provider.path}"

    # -- clients ------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        httpx = _import_httpx()
        policy = self.policy
        headers = {"Accept": "application/json", "User-Agent": "crossrank"}
        key = self._key_value()
        if key:
            headers[self.provider.auth_header] = f"{self.provider.auth_prefix}{key}"
        return {
            "headers": headers,
            "timeout": httpx.Timeout(policy.timeout, connect=policy.connect_timeout),
            "limits": httpx.Limits(
                max_connections=policy.max_connections,
                max_keepalive_connections=policy.max_connections,
            ),
            "verify": shared_ssl_context(),
        }

    def _new_sync_client(self) -> Any:
        return _import_httpx().Client(**self._client_options())

    def _new_async_client(self) -> Any:
        return _import_httpx().AsyncClient(**self._client_options())

    def _close_client(self, client: Any) -> None:
        client.close()

    async def _aclose_client(self, client: Any) -> None:
        await client.aclose()

    # -- one request --------------------------------------------------------------------------

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        built = self.provider.build_request(self._request_parts(query, documents))
        return {**built, **self.extra_body}

    def _send(self, query: str, documents: list[str], budget: float) -> Any:
        httpx = _import_httpx()
        stop_at = time.monotonic() + budget
        timeout = httpx.Timeout(budget, connect=min(self.policy.connect_timeout, budget))
        try:
            with self._client().stream(
                "POST", self.endpoint, json=self._body(query, documents), timeout=timeout
            ) as response:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > stop_at:  # the caller has stopped waiting: stop too
                        raise AttemptFailed("answer cut off at the time bound", retryable=True)
                return self._decoded(response.status_code, response.headers, b"".join(chunks))
        except httpx.TransportError as exc:
            raise failure_from_transport(exc, self._secrets) from None

    async def _asend(self, query: str, documents: list[str], slot: _LoopSlot[Any]) -> Any:
        httpx = _import_httpx()
        try:
            response = await slot.client.post(self.endpoint, json=self._body(query, documents))
        except httpx.TransportError as exc:
            raise failure_from_transport(exc, self._secrets) from None
        return self._decoded(response.status_code, response.headers, response.content)

    def _decoded(self, status: int, headers: Any, content: bytes) -> Any:
        try:
            body: Any = json.loads(content)
            decoded = True
        except ValueError:
            body, decoded = content.decode("utf-8", "replace"), False
        if not 200 <= status < 300:
            reason = error_text(body, self.provider.error_fields) if decoded else body
            raise failure_from_status(status, headers, reason, self._secrets)
        if not decoded:
            raise BackendResponseError(
                f"{self.name} answered HTTP {status} with a body that is not JSON"
            )
        return body


class JinaBackend(HttpRerankBackend):
    """Jina Reranker (``POST /v1/rerank``); key from ``JINA_API_KEY``."""

    provider = JINA


class CohereCompatibleBackend(HttpRerankBackend):
    """Any server that speaks Cohere's rerank format: vLLM, Infinity, OVMS, LiteLLM.

    ``base_url`` is the server's address with its path prefix (``http://host:8000/v1``);
    requests go to ``{base_url}/rerank``. No key unless ``api_key=`` is given.
    """

    provider = COHERE_COMPATIBLE


class TeiBackend(HttpRerankBackend):
    """Hugging Face Text Embeddings Inference (``POST {base_url}/rerank``)."""

    provider = TEI


class VoyageBackend(HttpRerankBackend):
    """Voyage AI rerankers (``POST /v1/rerank``); key from ``VOYAGE_API_KEY``."""

    provider = VOYAGE


class MixedbreadBackend(HttpRerankBackend):
    """Mixedbread rerankers (``POST /v1/reranking``); key from ``MXBAI_API_KEY``."""

    provider = MIXEDBREAD


__all__ = [
    "COHERE",
    "COHERE_COMPATIBLE",
    "JINA",
    "MIXEDBREAD",
    "TEI",
    "VOYAGE",
    "CohereCompatibleBackend",
    "HttpRerankBackend",
    "JinaBackend",
    "JsonBody",
    "MixedbreadBackend",
    "TeiBackend",
    "VoyageBackend",
]
