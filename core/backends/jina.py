"""Jina rerank backend over plain HTTP (httpx), ``POST {base_url}/rerank``.

Jina has no official Python SDK for reranking, so this module speaks the documented wire
format directly: ``{"model", "query", "documents", "top_n", "return_documents"}`` in,
``{"results": [{"index", "relevance_score"}, ...], "usage": {...}}`` out, with the key in an
``Authorization: Bearer`` header. Batching, retries, validation and secrecy come from
:mod:`crossrank.backends._remote`.
"""

from __future__ import annotations

from typing import Any

from crossrank.backends._remote import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_AFTER_MAX,
    DEFAULT_TIMEOUT,
    RemoteRerankBackend,
    failure_from_status,
    failure_from_transport,
    resolve_api_key,
)
from crossrank.errors import BackendResponseError, missing_dependency

DEFAULT_JINA_MODEL = "jina-reranker-v2-base-multilingual"
DEFAULT_JINA_BASE_URL = "https://api.jina.ai/v1"
#: Jina's API reference states no per-request document cap; 1,000 keeps bodies and latency
#: in the range Cohere documents for the same job. Override with max_documents_per_request.
JINA_MAX_DOCUMENTS_PER_REQUEST = 1000
JINA_KEY_ENV = ("JINA_API_KEY",)


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise missing_dependency("httpx", "jina") from exc
    return httpx


class JinaBackend(RemoteRerankBackend[Any]):
    """Scores with Jina Reranker; returns Jina's ``relevance_score`` per text, input order.

    Jina reads up to the model's context per (query, document) pair and cuts the rest; set
    ``max_tokens_per_doc`` to have the engine window longer documents (approximate tokens,
    see :func:`crossrank.backends._remote.approximate_token_spans`) instead.
    """

    name = "jina"
    default_max_documents_per_request = JINA_MAX_DOCUMENTS_PER_REQUEST

    def __init__(
        self,
        model: str = DEFAULT_JINA_MODEL,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_JINA_BASE_URL,
        max_tokens_per_doc: int | None = None,
        max_documents_per_request: int | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        _import_httpx()  # fail at construction, with the extra to install, not at first call
        super().__init__(
            model=model,
            api_key=resolve_api_key(api_key, JINA_KEY_ENV, "Jina"),
            base_url=base_url,
            max_tokens_per_doc=max_tokens_per_doc,
            max_documents_per_request=max_documents_per_request,
            max_concurrency=max_concurrency,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            retry_after_max=retry_after_max,
            max_connections=max_connections,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/rerank"

    # -- clients ------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        httpx = _import_httpx()
        return {
            "headers": {
                "Authorization": f"Bearer {self._api_key.reveal()}",
                "Accept": "application/json",
                "User-Agent": "crossrank",
            },
            "timeout": httpx.Timeout(self.timeout, connect=self.connect_timeout),
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
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

    def _request(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "model": self.model,
            "query": query,
            "documents": documents,
            # Every document's score is needed, and echoing the texts back is wasted bytes.
            "top_n": len(documents),
            "return_documents": False,
        }

    def _send(self, query: str, documents: list[str]) -> Any:
        httpx = _import_httpx()
        try:
            response = self._client().post(self.endpoint, json=self._request(query, documents))
        except httpx.TransportError as exc:
            raise failure_from_transport(exc, self._secrets) from None
        return self._decoded(response)

    async def _asend(self, query: str, documents: list[str]) -> Any:
        httpx = _import_httpx()
        try:
            response = await self._aclient().post(
                self.endpoint, json=self._request(query, documents)
            )
        except httpx.TransportError as exc:
            raise failure_from_transport(exc, self._secrets) from None
        return self._decoded(response)

    def _decoded(self, response: Any) -> Any:
        if not 200 <= response.status_code < 300:
            raise failure_from_status(
                response.status_code, response.headers, _error_text(response), self._secrets
            )
        try:
            return response.json()
        except ValueError:
            raise BackendResponseError(
                f"{self.name} answered HTTP {response.status_code} with a body that is not JSON"
            ) from None


def _error_text(response: Any) -> str:
    """Jina's error bodies carry ``detail`` (a string or a list of validation errors)."""
    try:
        body = response.json()
    except ValueError:
        return str(response.text)
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)
