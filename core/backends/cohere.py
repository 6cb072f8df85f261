"""Cohere rerank backend on the official ``cohere`` SDK (v2 clients, ``/v2/rerank``).

The SDK sends the request and raises its typed errors; everything else (batching, retries,
validation, secrecy) is the shared machinery of :mod:`crossrank.backends._remote`. The SDK's
own retry loop is switched off (``max_retries=0`` on each request) so that every retry is
ours: bounded, jittered, ``Retry-After``-aware and logged. The SDK gets an httpx client that
crossrank builds, which is where the connect/total timeouts and the connection-pool bound live.
Checked against cohere 5.16 and 7.3.
"""

from __future__ import annotations

import os
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
    AttemptFailed,
    RemoteRerankBackend,
    failure_from_status,
    failure_from_transport,
    redact,
    resolve_api_key,
)
from crossrank.errors import BackendResponseError, missing_dependency

DEFAULT_COHERE_MODEL = "rerank-v3.5"
DEFAULT_COHERE_BASE_URL = "https://api.cohere.com"
#: Cohere documents 1,000 documents as the most one rerank request should carry.
COHERE_MAX_DOCUMENTS_PER_REQUEST = 1000
#: Environment variables read for the key, in order (the SDK's name first).
COHERE_KEY_ENV = ("CO_API_KEY", "COHERE_API_KEY")


def _import_cohere() -> Any:
    try:
        import cohere
    except ImportError as exc:
        raise missing_dependency("cohere", "cohere") from exc
    return cohere


def _import_sdk_errors() -> Any:
    """``cohere.core``, where the SDK keeps ``ApiError`` and ``ParsingError``."""
    try:
        import cohere.core
    except ImportError as exc:
        raise missing_dependency("cohere", "cohere") from exc
    return cohere.core


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise missing_dependency("httpx", "cohere") from exc
    return httpx


class CohereBackend(RemoteRerankBackend[Any]):
    """Scores with Cohere Rerank; returns Cohere's ``relevance_score`` per text, input order.

    ``max_tokens_per_doc`` is passed to Cohere (which truncates longer documents) and, when
    set, is also the engine's window budget: documents longer than that many approximate
    tokens are cut into windows, so no part of a document goes unread. ``base_url`` (or the
    SDK's ``CO_API_URL`` variable) points the SDK at a proxy or a self-hosted deployment.
    """

    name = "cohere"
    default_max_documents_per_request = COHERE_MAX_DOCUMENTS_PER_REQUEST

    def __init__(
        self,
        model: str = DEFAULT_COHERE_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
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
        _import_cohere()  # fail at construction, with the extra to install, not at first call
        super().__init__(
            model=model,
            api_key=resolve_api_key(api_key, COHERE_KEY_ENV, "Cohere"),
            base_url=base_url or os.environ.get("CO_API_URL") or DEFAULT_COHERE_BASE_URL,
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

    # -- clients ------------------------------------------------------------------------------

    def _httpx_options(self) -> dict[str, Any]:
        httpx = _import_httpx()
        return {
            "timeout": httpx.Timeout(self.timeout, connect=self.connect_timeout),
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            "follow_redirects": True,
        }

    def _sdk_options(self) -> dict[str, Any]:
        return {
            "api_key": self._api_key.reveal(),
            "base_url": self.base_url,
            "client_name": "crossrank",
            "log_warning_experimental_features": False,
        }

    def _new_sync_client(self) -> Any:
        cohere = _import_cohere()
        httpx = _import_httpx()
        return cohere.ClientV2(
            httpx_client=httpx.Client(**self._httpx_options()), **self._sdk_options()
        )

    def _new_async_client(self) -> Any:
        cohere = _import_cohere()
        httpx = _import_httpx()
        return cohere.AsyncClientV2(
            httpx_client=httpx.AsyncClient(**self._httpx_options()), **self._sdk_options()
        )

    def _close_client(self, client: Any) -> None:
        client._client_wrapper.httpx_client.httpx_client.close()

    async def _aclose_client(self, client: Any) -> None:
        await client._client_wrapper.httpx_client.httpx_client.aclose()

    # -- one request --------------------------------------------------------------------------

    def _request(self, query: str, documents: list[str]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "query": query,
            "documents": documents,
            # Retries are crossrank's (bounded, logged, Retry-After-aware), never the SDK's.
            # Per request rather than per client: every SDK release since 5.x honours this.
            "request_options": {"max_retries": 0},
        }
        if self.max_tokens_per_doc is not None:
            request["max_tokens_per_doc"] = self.max_tokens_per_doc
        return request

    def _send(self, query: str, documents: list[str]) -> Any:
        client = self._client()
        failure: Exception | None = None
        try:
            response = client.rerank(**self._request(query, documents))
        except Exception as exc:
            failure = self._translate(exc)
        # Raised outside the handler so the SDK's exception, which may quote request
        # headers, is neither the cause nor the context of what callers see.
        if failure is not None:
            raise failure
        return _as_payload(response)

    async def _asend(self, query: str, documents: list[str]) -> Any:
        client = self._aclient()
        failure: Exception | None = None
        try:
            response = await client.rerank(**self._request(query, documents))
        except Exception as exc:
            failure = self._translate(exc)
        if failure is not None:
            raise failure
        return _as_payload(response)

    def _translate(self, exc: Exception) -> Exception:
        """An SDK or httpx exception as AttemptFailed / BackendResponseError, sanitized.

        The SDK's own messages embed response headers and bodies, so they are never reused
        verbatim: only the status, ``Retry-After`` and a scrubbed excerpt of the body are kept.
        """
        sdk_errors = _import_sdk_errors()
        httpx = _import_httpx()
        if isinstance(exc, sdk_errors.ApiError):
            status = exc.status_code
            if status is not None and 200 <= status < 300:
                # The SDK could not decode a successful answer (truncated or malformed JSON).
                return BackendResponseError(
                    f"{self.name} answered HTTP {status} with a body that is not valid JSON"
                )
            body = exc.body if isinstance(exc.body, str) else _error_message(exc.body)
            return failure_from_status(status or 0, exc.headers, body, self._secrets)
        if isinstance(exc, httpx.TransportError):
            return failure_from_transport(exc, self._secrets)
        parsing_error = getattr(sdk_errors, "ParsingError", None)
        if parsing_error is not None and isinstance(exc, parsing_error):
            return BackendResponseError(f"{self.name} response does not match the rerank schema")
        if isinstance(exc, (TypeError, ValueError, KeyError, AttributeError)):
            # Non-2xx answers arrive as ApiError; these come from decoding a 2xx body whose
            # JSON is not a rerank object (a list, a string...).
            return BackendResponseError(
                f"{self.name} response does not match the rerank schema ({type(exc).__name__})"
            )
        return AttemptFailed(
            f"unexpected {type(exc).__name__}: {redact(str(exc), self._secrets)[:300]}",
            retryable=False,
        )


def _as_payload(response: Any) -> dict[str, Any]:
    """The SDK's typed response back in wire shape, for the shared validation.

    The SDK builds its response objects without validating them, so whatever the server
    sent (a NaN, an index out of range, a missing field as ``None``) is still there to check.
    """
    results = getattr(response, "results", None)
    if not isinstance(results, list):
        return {"results": results}
    items: list[Any] = []
    for item in results:
        if hasattr(item, "index") or hasattr(item, "relevance_score"):
            item = {
                "index": getattr(item, "index", None),
                "relevance_score": getattr(item, "relevance_score", None),
            }
        items.append(item)
    return {"results": items}


def _error_message(body: Any) -> str:
    """Cohere's error bodies are ``{"message": ...}``; fall back to the whole body."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return "" if body is None else str(body)
