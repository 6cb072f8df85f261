"""Cohere rerank backend on the official ``cohere`` SDK (v2 clients, ``/v2/rerank``).

The SDK sends the request and raises its typed errors; everything else (policy, batching,
retries, bounds, validation, secrecy) is the shared machinery of
:mod:`crossrank.backends.http`, and the wire format is the ``COHERE`` spec of
:mod:`crossrank.backends.providers`. The SDK's own retry loop is switched off
(``max_retries=0`` on each request) so that every retry is ours: bounded, jittered,
``Retry-After``-aware and logged. The SDK gets an httpx client that crossrank builds, which
is where the connect timeout and the connection-pool bound live. The answer is validated
from the raw JSON the server sent, not from the SDK's typed objects, which coerce an index
of ``6.0`` or ``"5"`` into an int.

Servers that speak Cohere's format (vLLM, Infinity, LiteLLM...) work with ``base_url``;
those that reject the SDK (no key, another path prefix) have the ``cohere-compatible``
backend. Checked against cohere 5.16 and 7.3.
"""

from __future__ import annotations

import os
from typing import Any

from crossrank.backends.http import RemoteRerankBackend, _LoopSlot
from crossrank.backends.providers import COHERE, cohere_request
from crossrank.backends.wire import (
    AttemptFailed,
    error_text,
    failure_from_status,
    failure_from_transport,
    redact,
    require,
    shared_ssl_context,
)
from crossrank.errors import BackendResponseError

DEFAULT_COHERE_MODEL = COHERE.default_model
DEFAULT_COHERE_BASE_URL = COHERE.base_url
COHERE_MAX_DOCUMENTS_PER_REQUEST = COHERE.max_documents_per_request
#: Environment variables read for the key, in order (the SDK's name first).
COHERE_KEY_ENV = COHERE.key_env


def _import_cohere() -> Any:
    return require("cohere", package="cohere", extra="cohere")


def _import_sdk_errors() -> Any:
    """``cohere.core``, where the SDK keeps ``ApiError`` and ``ParsingError``."""
    return require("cohere.core", package="cohere", extra="cohere")


def _import_httpx() -> Any:
    return require("httpx", package="httpx", extra="cohere")


class CohereBackend(RemoteRerankBackend[Any]):
    """Scores with Cohere Rerank; returns Cohere's ``relevance_score`` per text, input order.

    ``max_tokens_per_doc`` is passed to Cohere (which truncates longer documents) and, when
    set, is also the engine's window budget: documents longer than that many approximate
    tokens are cut into windows, so no part of a document goes unread. ``base_url`` (or the
    SDK's ``CO_API_URL`` variable) points the SDK at a proxy or a self-hosted deployment.
    """

    name = "cohere"
    provider = COHERE

    def _require_dependencies(self) -> None:
        _import_cohere()

    def _default_base_url(self, given: str | None) -> Any:
        return given or os.environ.get("CO_API_URL") or COHERE.base_url

    # -- clients ------------------------------------------------------------------------------

    def _httpx_options(self) -> dict[str, Any]:
        httpx = _import_httpx()
        policy = self.policy
        return {
            "timeout": httpx.Timeout(policy.timeout, connect=policy.connect_timeout),
            "limits": httpx.Limits(
                max_connections=policy.max_connections,
                max_keepalive_connections=policy.max_connections,
            ),
            "verify": shared_ssl_context(),
            "follow_redirects": True,
        }

    def _sdk_options(self) -> dict[str, Any]:
        return {
            "api_key": self._key_value(),
            "base_url": self.base_url,
            "client_name": "crossrank",
            "log_warning_experimental_features": False,
        }

    def _new_sync_client(self) -> Any:
        httpx = _import_httpx()
        return _import_cohere().ClientV2(
            httpx_client=httpx.Client(**self._httpx_options()), **self._sdk_options()
        )

    def _new_async_client(self) -> Any:
        httpx = _import_httpx()
        return _import_cohere().AsyncClientV2(
            httpx_client=httpx.AsyncClient(**self._httpx_options()), **self._sdk_options()
        )

    def _close_client(self, client: Any) -> None:
        client._client_wrapper.httpx_client.httpx_client.close()

    async def _aclose_client(self, client: Any) -> None:
        await client._client_wrapper.httpx_client.httpx_client.aclose()

    # -- one request --------------------------------------------------------------------------

    def _request(self, query: str, documents: list[str], budget: float | None) -> dict[str, Any]:
        # Retries are crossrank's (bounded, logged, Retry-After-aware), never the SDK's.
        # Per request rather than per client: every SDK release since 5.x honours this.
        options: dict[str, Any] = {"max_retries": 0}
        if budget is not None:
            options["timeout_in_seconds"] = budget
        if self.extra_body:
            options["additional_body_parameters"] = dict(self.extra_body)
        return {
            **cohere_request(self._request_parts(query, documents)),
            "request_options": options,
        }

    def _send(self, query: str, documents: list[str], budget: float) -> Any:
        client = self._client()
        failure: Exception | None = None
        try:
            raw = client.with_raw_response.rerank(**self._request(query, documents, budget))
        except Exception as exc:
            failure = self._translate(exc)
        # Raised outside the handler so the SDK's exception, which may quote request
        # headers, is neither the cause nor the context of what callers see.
        if failure is not None:
            raise failure
        return self._raw_json(raw)

    async def _asend(self, query: str, documents: list[str], slot: _LoopSlot[Any]) -> Any:
        failure: Exception | None = None
        try:
            raw = await slot.client.with_raw_response.rerank(
                **self._request(query, documents, None)
            )
        except Exception as exc:
            failure = self._translate(exc)
        if failure is not None:
            raise failure
        return self._raw_json(raw)

    def _raw_json(self, raw: Any) -> Any:
        """The JSON the server sent (already decoded once by the SDK, so valid)."""
        response = getattr(raw, "response", None) or raw._response  # 5.x names it privately
        try:
            return response.json()
        except ValueError:
            raise BackendResponseError(
                f"{self.name} answered HTTP {response.status_code} with a body that is not JSON"
            ) from None

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
            body = exc.body if isinstance(exc.body, str) else error_text(exc.body, ("message",))
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
