"""Every rerank provider, through the engine, against a real local server in its format.

The contract is written once and parametrized over the providers: scores come back in input
order across batches, a failure falls back to the first stage (flagged) or raises when
strict, 429 / 5xx / timeouts are retried, malformed answers are refused, and the key never
shows. Below it, one wire-format test per provider pins its request and answer to the
provider's published API reference.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from crossrank import BackendResponseError, BackendUnavailableError, ConfigurationError, Reranker
from crossrank.backends import backend_class, create_backend
from crossrank.backends.http import HttpPolicy, RemoteRerankBackend
from crossrank.secrets import Secret
from tests.support.fake_rerank_server import (
    PROVIDERS,
    WIRES,
    FakeRerankServer,
    Fault,
    expected_scores,
)

API_KEY = "crk-provider-3e9b71c0aa-DO-NOT-LEAK"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "connect_timeout": 2.0}
KEY_VARIABLES = ("CO_API_KEY", "COHERE_API_KEY", "JINA_API_KEY", "VOYAGE_API_KEY", "MXBAI_API_KEY")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*KEY_VARIABLES, "CO_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: FakeRerankServer) -> None:
    server.reset()
    server.configure(latency=0.0, max_documents=10_000)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def options(server: FakeRerankServer, provider: str, **http: Any) -> dict[str, Any]:
    return {**server.client_options(provider), "http": {**FAST, **http}}


def reranker(
    server: FakeRerankServer, provider: str, *, strict: bool = False, **more: Any
) -> Reranker:
    http = {name: more.pop(name) for name in list(more) if name in ("max_retries", "timeout")}
    return Reranker(
        provider, backend_options={**options(server, provider, **http), **more}, strict=strict
    )


def texts(count: int) -> list[str]:
    return [f"passage {index} on subject {index % 5}" for index in range(count)]


def truth_order(query: str, documents: list[str]) -> list[int]:
    scores = expected_scores(query, documents)
    return sorted(range(len(documents)), key=lambda index: -scores[index])


async def call(ranker: Reranker, mode: str, query: str, documents: list[str]) -> Any:
    if mode == "sync":
        return ranker.rerank(query, documents)
    return await ranker.arerank(query, documents)


# -- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_order_is_kept_across_batches(
    server: FakeRerankServer, provider: str, mode: str
) -> None:
    server.configure(max_documents=4)
    ranker = reranker(server, provider, strict=True, max_documents_per_request=4)
    documents = texts(11)
    result = await call(ranker, mode, "subject 3", documents)
    assert result.report.status == "reranked"
    assert [item.input_index for item in result.ranked] == truth_order("subject 3", documents)
    assert [item.raw_score for item in result.ranked] == sorted(
        expected_scores("subject 3", documents), reverse=True
    )
    field = WIRES[provider].documents_field
    assert sorted(len(request.body[field]) for request in server.requests) == [3, 4, 4]
    await ranker.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failure_falls_back_flagged_or_raises_when_strict(
    server: FakeRerankServer, provider: str, mode: str
) -> None:
    documents = texts(6)
    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    fallback = await call(reranker(server, provider, max_retries=1), mode, "q", documents)
    assert fallback.report.status == "fallback"
    assert "BackendUnavailableError" in (fallback.report.error or "")
    assert [item.input_index for item in fallback.ranked] == list(range(6))
    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    with pytest.raises(BackendUnavailableError, match="HTTP 503"):
        await call(reranker(server, provider, strict=True, max_retries=1), mode, "q", documents)


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("status", status=429, retry_after="0")],
        [Fault("status", status=500), Fault("status", status=502)],
        [Fault("slow", delay=1.0)],
        [Fault("disconnect")],
    ],
    ids=["429", "5xx", "timeout", "disconnect"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_transient_faults_are_retried(
    server: FakeRerankServer, provider: str, mode: str, faults: list[Fault]
) -> None:
    server.fail_next(*faults)
    ranker = reranker(server, provider, strict=True, timeout=0.4)
    documents = texts(5)
    result = await call(ranker, mode, "subject 1", documents)
    assert [item.input_index for item in result.ranked] == truth_order("subject 1", documents)
    assert len(server.requests) == len(faults) + 1
    await ranker.aclose()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("malformed", "not (valid )?JSON"),
        ("wrong_index", "outside"),
        ("duplicate_index", "more than once"),
        ("missing_index", "missing indices"),
        ("nan_score", "non-finite"),
    ],
)
def test_malformed_answers_are_refused(
    server: FakeRerankServer, provider: str, kind: str, message: str
) -> None:
    server.fail_next(Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(BackendResponseError, match=message):
        reranker(server, provider, strict=True).rerank("q", texts(5))
    server.fail_next(Fault(kind))  # type: ignore[arg-type]
    fallback = reranker(server, provider).rerank("q", texts(5))
    assert fallback.report.status == "fallback"
    assert [item.input_index for item in fallback.ranked] == list(range(5))


def test_the_key_is_never_shown(
    server: FakeRerankServer,
    provider: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: crossrank, httpx, httpcore, the SDK
    ranker = reranker(server, provider, max_retries=1)
    strict = reranker(server, provider, strict=True, max_retries=0)
    seen = [repr(ranker), repr(ranker.backend), json.dumps(ranker.to_config())]
    server.fail_next(
        Fault("status", status=500, echo_authorization=True),
        Fault("status", status=500, echo_authorization=True),
    )
    seen.append(ranker.rerank("q", texts(3)).report.error or "")
    server.fail_next(Fault("echo_headers"))
    assert ranker.rerank("q", texts(3)).report.status == "reranked"
    server.fail_next(Fault("status", status=401, echo_authorization=True))
    with pytest.raises(BackendUnavailableError) as raised:
        strict.rerank("q", texts(3))
    seen += [str(raised.value), repr(raised.value)]
    # An environment-variable key is saved as where it comes from, never as its value.
    variable = "CRK_PROVIDER_KEY"
    monkeypatch.setenv(variable, API_KEY)
    from_env = Reranker(
        provider,
        backend_options={
            **options(server, provider),
            "api_key": Secret.from_env_var(variable),
        },
    )
    config = from_env.to_config()
    assert config["backend_options"]["api_key"]["env_vars"] == [variable]
    seen.append(json.dumps(config))
    assert from_env.rerank("q", texts(3)).report.status == "reranked"
    seen += [caplog.text, *(record.getMessage() for record in caplog.records)]
    assert any("***" in text for text in seen), "no echo came back: the check proves nothing"
    assert [text for text in seen if API_KEY in text] == []


def test_registered_and_configurable_by_name(server: FakeRerankServer, provider: str) -> None:
    cls = backend_class(provider)
    assert issubclass(cls, RemoteRerankBackend)
    assert cls.secret_options == ("api_key",)
    assert cls.name == provider
    backend = create_backend(provider, **options(server, provider))
    rebuilt = cls(api_key=API_KEY, **json.loads(json.dumps(backend.to_config())))
    assert rebuilt.to_config() == backend.to_config()


def test_a_missing_key_names_the_variables(provider: str) -> None:
    cls = backend_class(provider)
    variables = cls.provider.key_env
    if not variables:
        pytest.skip(f"{provider} needs no key unless one is given")
    with pytest.raises(ConfigurationError, match=", ".join(variables)):
        cls(base_url="http://127.0.0.1:9")


# -- self-hosted servers ------------------------------------------------------------------------


def test_self_hosted_servers_need_a_base_url() -> None:
    for name in ("tei", "cohere-compatible"):
        with pytest.raises(ConfigurationError, match="base_url"):
            create_backend(name)


def test_servers_without_a_key_get_no_authorization_header() -> None:
    with FakeRerankServer(api_key=None) as open_server:
        for name in ("tei", "cohere-compatible"):
            backend = create_backend(name, base_url=open_server.base_url(name))
            assert backend.score("q", ["a", "b"]) == expected_scores("q", ["a", "b"])
        assert all("Authorization" not in request.headers for request in open_server.requests)


def test_the_cohere_sdk_works_against_a_self_hosted_cohere_format_server() -> None:
    # vLLM and Infinity serve /v2/rerank without a key: the SDK wants one, any will do.
    with FakeRerankServer(api_key=None) as open_server:
        ranker = Reranker(
            "cohere",
            model="BAAI/bge-reranker-v2-m3",
            backend_options={"api_key": "unused", "base_url": open_server.url},
            strict=True,
        )
        documents = texts(7)
        result = ranker.rerank("subject 2", documents)
        assert [item.input_index for item in result.ranked] == truth_order("subject 2", documents)
        (request,) = open_server.requests
        assert request.path == "/v2/rerank"
        assert request.body["model"] == "BAAI/bge-reranker-v2-m3"


def test_tei_batches_past_its_server_side_batch_size_in_order(server: FakeRerankServer) -> None:
    server.configure(max_documents=32)  # TEI's default --max-client-batch-size
    backend = create_backend("tei", **options(server, "tei"))
    documents = texts(70)
    assert backend.score("subject 4", documents) == expected_scores("subject 4", documents)
    assert sorted(len(request.body["texts"]) for request in server.requests) == [6, 32, 32]
    server.reset()
    too_big = create_backend("tei", **options(server, "tei"), max_documents_per_request=40)
    with pytest.raises(BackendUnavailableError, match="HTTP 413: too many documents: 40 > 32"):
        too_big.score("q", documents[:40])


# -- wire formats, one per provider --------------------------------------------------------------


def only_request(server: FakeRerankServer, backend: Any, query: str, documents: list[str]) -> Any:
    assert backend.score(query, documents) == expected_scores(query, documents)
    (request,) = server.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    return request


def test_tei_wire_format(server: FakeRerankServer) -> None:
    backend = create_backend("tei", **options(server, "tei"))
    request = only_request(server, backend, "q", ["a", "b"])
    assert request.path == "/tei/rerank"
    assert request.body == {
        "query": "q",
        "texts": ["a", "b"],
        "raw_scores": False,
        "truncate": True,
    }


def test_cohere_compatible_wire_format(server: FakeRerankServer) -> None:
    backend = create_backend(
        "cohere-compatible", model="bge-reranker-v2-m3", **options(server, "cohere-compatible")
    )
    request = only_request(server, backend, "q", ["a", "b", "c"])
    assert request.path == "/compat/v1/rerank"
    assert request.body == {
        "model": "bge-reranker-v2-m3",
        "query": "q",
        "documents": ["a", "b", "c"],
        "top_n": 3,
    }


def test_voyage_wire_format(server: FakeRerankServer) -> None:
    backend = create_backend("voyage", **options(server, "voyage"))
    request = only_request(server, backend, "q", ["a"])
    assert request.path == "/voyage/v1/rerank"
    assert request.body == {
        "model": "rerank-2.5",
        "query": "q",
        "documents": ["a"],
        "return_documents": False,
    }


def test_mixedbread_wire_format(server: FakeRerankServer) -> None:
    backend = create_backend("mixedbread", **options(server, "mixedbread"))
    request = only_request(server, backend, "q", ["a", "b"])
    assert request.path == "/mixedbread/v1/reranking"
    assert request.body == {
        "model": "mixedbread-ai/mxbai-rerank-large-v2",
        "query": "q",
        "input": ["a", "b"],
        "top_k": 2,
        "return_input": False,
    }


def test_extra_body_reaches_the_wire(server: FakeRerankServer) -> None:
    backend = create_backend("tei", **options(server, "tei"), extra_body={"truncate": False})
    assert only_request(server, backend, "q", ["a"]).body["truncate"] is False


def test_keys_come_from_each_providers_variable(
    server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, variable in (("voyage", "VOYAGE_API_KEY"), ("mixedbread", "MXBAI_API_KEY")):
        monkeypatch.setenv(variable, API_KEY)
        backend = create_backend(name, base_url=server.base_url(name))
        assert backend.to_config()["api_key"] == {
            "type": "env_var",
            "env_vars": [variable],
            "strict": True,
        }
        asyncio.run(backend.ascore("q", ["a"]))
    assert [r.headers["Authorization"] for r in server.requests] == [f"Bearer {API_KEY}"] * 2


def test_the_http_policy_and_an_env_key_round_trip_through_the_engine_config(
    server: FakeRerankServer, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRK_PROVIDER_KEY", API_KEY)
    policy = HttpPolicy(timeout=3, deadline_s=9, max_retries=2)
    ranker = Reranker(
        provider,
        backend_options={
            "base_url": server.base_url(provider),
            "api_key": Secret.from_env_var("CRK_PROVIDER_KEY"),
            "http": policy,
        },
    )
    saved = json.dumps(ranker.to_config())
    assert API_KEY not in saved
    loaded = Reranker.from_config(json.loads(saved))
    assert loaded.backend.policy == policy  # type: ignore[attr-defined]
    assert loaded.rerank("q", texts(3)).report.status == "reranked"
