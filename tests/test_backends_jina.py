"""Jina backend: what goes on the wire through real httpx clients, and how it is set up.

Shared behaviour (retries, batching, validation, secrecy) is in test_backends_http.py;
the engine-level contract every provider meets is in test_providers.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crossrank import BackendUnavailableError, ConfigurationError, Reranker, create_backend
from crossrank.backends.jina import DEFAULT_JINA_BASE_URL, JinaBackend
from tests.support.fake_rerank_server import JINA_PATH, FakeRerankServer, expected_scores

API_KEY = "jina_test_5e6f7a8b9c-SECRET"
FAST = {"http": {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}}


@pytest.fixture
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_ambient_jina_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JINA_API_KEY", raising=False)


def test_request_follows_the_v1_rerank_wire_format(server: FakeRerankServer) -> None:
    backend = JinaBackend(**server.client_options("jina"), **FAST)
    texts = ["Organic skincare for sensitive skin", "Bold new makeup trends", "Bio-Hautpflege"]
    scores = backend.score("organic skincare", texts)
    assert scores == expected_scores("organic skincare", texts)
    (request,) = server.requests
    assert request.path == JINA_PATH
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "model": "jina-reranker-v2-base-multilingual",
        "query": "organic skincare",
        "documents": texts,
        "top_n": 3,
        "return_documents": False,
    }


async def test_async_client_speaks_the_same_format(server: FakeRerankServer) -> None:
    backend = JinaBackend("jina-reranker-m0", **server.client_options("jina"), **FAST)
    texts = ["one", "two"]
    assert await backend.ascore("q", texts) == expected_scores("q", texts)
    (request,) = server.requests
    assert request.path == JINA_PATH
    assert request.body["model"] == "jina-reranker-m0"
    await backend.aclose()


def test_key_comes_from_the_argument_or_jina_api_key(
    server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JINA_API_KEY", API_KEY)
    JinaBackend(base_url=server.jina_base_url, **FAST).score("q", ["a"])
    with pytest.raises(BackendUnavailableError) as caught:
        JinaBackend(api_key="jina_wrong", base_url=server.jina_base_url, **FAST).score("q", ["a"])
    assert caught.value.status_code == 401
    assert [r.headers["Authorization"] for r in server.requests] == [
        f"Bearer {API_KEY}",
        "Bearer jina_wrong",
    ]


def test_a_missing_key_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="JINA_API_KEY"):
        JinaBackend()


def test_base_url_defaults_to_jina_and_accepts_a_trailing_slash(server: FakeRerankServer) -> None:
    assert JinaBackend(api_key=API_KEY).endpoint == f"{DEFAULT_JINA_BASE_URL}/rerank"
    backend = JinaBackend(api_key=API_KEY, base_url=server.jina_base_url + "/", **FAST)
    backend.score("q", ["a"])
    assert server.requests[0].path == JINA_PATH


def test_validation_detail_reaches_the_caller(server: FakeRerankServer) -> None:
    server.configure(max_documents=2)
    backend = JinaBackend(**server.client_options("jina"), **FAST, max_documents_per_request=4)
    with pytest.raises(BackendUnavailableError, match="HTTP 422: too many documents: 4 > 2"):
        backend.score("q", ["a", "b", "c", "d"])
    assert len(server.requests) == 1


def test_registered_under_its_short_name(server: FakeRerankServer) -> None:
    backend = create_backend("jina", **server.client_options("jina"))
    assert isinstance(backend, JinaBackend)
    reranker = Reranker("jina", backend_options=server.client_options("jina"))
    result = reranker.rerank("q", ["x", "y", "z"])
    assert result.report.backend == "jina"
    assert result.report.model == "jina-reranker-v2-base-multilingual"
    assert sorted(item.input_index for item in result.ranked) == [0, 1, 2]
