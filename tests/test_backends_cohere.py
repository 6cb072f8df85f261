"""Cohere backend: what goes on the wire through the real ``cohere`` SDK, and how it is set up.

Shared behaviour (retries, batching, validation, secrecy) is in test_backends_http.py;
the engine-level contract every provider meets is in test_providers.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crossrank import BackendUnavailableError, ConfigurationError, Reranker, create_backend
from crossrank.backends.cohere import DEFAULT_COHERE_BASE_URL, CohereBackend
from tests.support.fake_rerank_server import COHERE_PATH, FakeRerankServer, Fault, expected_scores

API_KEY = "co-test-0a1b2c3d4e-SECRET"
FAST = {"http": {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}}


@pytest.fixture
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_ambient_cohere_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CO_API_KEY", "COHERE_API_KEY", "CO_API_URL"):
        monkeypatch.delenv(name, raising=False)


def test_request_follows_the_v2_rerank_wire_format(server: FakeRerankServer) -> None:
    backend = CohereBackend(**server.client_options("cohere"), **FAST)
    texts = ["Carson City is the capital of Nevada.", "Washington, D.C. is the US capital."]
    scores = backend.score("capital of the United States", texts)
    assert scores == expected_scores("capital of the United States", texts)
    (request,) = server.requests
    assert request.path == COHERE_PATH
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body["model"] == "rerank-v3.5"
    assert request.body["query"] == "capital of the United States"
    assert request.body["documents"] == texts
    # Unset options are left out, so Cohere applies its own defaults.
    assert "max_tokens_per_doc" not in request.body
    assert "top_n" not in request.body


def test_model_and_max_tokens_per_doc_are_sent(server: FakeRerankServer) -> None:
    backend = CohereBackend(
        "rerank-multilingual-v3.0",
        **server.client_options("cohere"),
        max_tokens_per_doc=512,
        **FAST,
    )
    backend.score("q", ["a", "b"])
    (request,) = server.requests
    assert request.body["model"] == "rerank-multilingual-v3.0"
    assert request.body["max_tokens_per_doc"] == 512
    assert backend.model_name == "rerank-multilingual-v3.0"
    assert backend.window_token_budget("q") == 512


async def test_async_client_speaks_the_same_format(server: FakeRerankServer) -> None:
    backend = CohereBackend(**server.client_options("cohere"), **FAST)
    texts = ["one", "two", "three"]
    assert await backend.ascore("q", texts) == expected_scores("q", texts)
    (request,) = server.requests
    assert request.path == COHERE_PATH and request.body["documents"] == texts
    await backend.aclose()


def test_the_sdk_does_not_retry_behind_our_back(server: FakeRerankServer) -> None:
    backend = CohereBackend(
        **server.client_options("cohere"), http={**FAST["http"], "max_retries": 0}
    )
    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    with pytest.raises(BackendUnavailableError, match="after 1 attempt"):
        backend.score("q", ["a"])
    assert len(server.requests) == 1


def test_key_comes_from_co_api_key_then_cohere_api_key(
    server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url = server.cohere_base_url
    monkeypatch.setenv("COHERE_API_KEY", API_KEY)
    CohereBackend(base_url=base_url, **FAST).score("q", ["a"])
    monkeypatch.setenv("CO_API_KEY", "co-key-that-the-server-rejects")
    with pytest.raises(BackendUnavailableError) as caught:
        CohereBackend(base_url=base_url, **FAST).score("q", ["a"])
    assert caught.value.status_code == 401  # CO_API_KEY wins over COHERE_API_KEY
    # An explicit argument wins over both.
    CohereBackend(api_key=API_KEY, base_url=base_url, **FAST).score("q", ["a"])
    assert [r.headers["Authorization"] for r in server.requests] == [
        f"Bearer {API_KEY}",
        "Bearer co-key-that-the-server-rejects",
        f"Bearer {API_KEY}",
    ]


def test_a_missing_key_is_a_configuration_error_naming_the_variables() -> None:
    with pytest.raises(ConfigurationError, match="CO_API_KEY, COHERE_API_KEY"):
        CohereBackend()
    with pytest.raises(ConfigurationError, match="api_key"):
        CohereBackend(api_key="  ")


def test_base_url_defaults_to_cohere_or_co_api_url(
    server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CohereBackend(api_key=API_KEY).base_url == DEFAULT_COHERE_BASE_URL
    monkeypatch.setenv("CO_API_URL", server.cohere_base_url + "/")
    backend = CohereBackend(api_key=API_KEY, **FAST)
    assert backend.base_url == server.cohere_base_url
    backend.score("q", ["a"])
    assert len(server.requests) == 1


def test_registered_under_its_short_name(server: FakeRerankServer) -> None:
    backend = create_backend("cohere", **server.client_options("cohere"))
    assert isinstance(backend, CohereBackend)
    reranker = Reranker("cohere", model="rerank-english-v3.0", backend_options={"api_key": API_KEY})
    assert reranker.backend.model_name == "rerank-english-v3.0"
    assert API_KEY not in repr(reranker)


def test_provider_error_message_reaches_the_caller(server: FakeRerankServer) -> None:
    # The server's own limit is exceeded because the client was told a larger one.
    server.configure(max_documents=3)
    backend = CohereBackend(**server.client_options("cohere"), **FAST, max_documents_per_request=5)
    with pytest.raises(BackendUnavailableError, match="HTTP 400: too many documents: 5 > 3"):
        backend.score("q", ["a", "b", "c", "d", "e"])


def test_extra_body_reaches_the_wire_through_the_sdk(server: FakeRerankServer) -> None:
    backend = CohereBackend(**server.client_options("cohere"), **FAST, extra_body={"priority": 3})
    backend.score("q", ["a"])
    (request,) = server.requests
    assert request.body["priority"] == 3
    assert backend.to_config()["extra_body"] == {"priority": 3}
