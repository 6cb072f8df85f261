"""The shared HTTP machinery, checked through both of its clients: Cohere (the real SDK) and
Jina (plain httpx, as every other provider spec).

Each test starts a local server that speaks the provider's wire format on 127.0.0.1 and
scores deterministically, so correctness is checked against the server's own scoring.
Timeouts and backoff are tiny so faults cost milliseconds. The engine-level contract every
provider meets is in test_providers.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import pickle
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crossrank import BackendResponseError, BackendUnavailableError, ConfigurationError, Reranker
from crossrank.backends.cohere import CohereBackend
from crossrank.backends.http import HttpPolicy, RemoteRerankBackend
from crossrank.backends.jina import JinaBackend
from crossrank.backends.wire import (
    approximate_token_spans,
    parse_retry_after,
    redact,
    scores_in_input_order,
)
from crossrank.secrets import Secret
from tests.support.fake_rerank_server import FakeRerankServer, Fault, expected_scores

API_KEY = "crk-test-7f3a9c1e5b-DO-NOT-LEAK"
PROVIDERS = ("cohere", "jina")
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "connect_timeout": 2.0}
POLICY_FIELDS = {field.name for field in dataclasses.fields(HttpPolicy)}


def backend_options(base: dict[str, Any], **options: Any) -> dict[str, Any]:
    """``base`` and ``options`` as backend keywords: HttpPolicy fields go into ``http=``."""
    merged = {**base, **options}
    http = {**FAST, **{name: merged.pop(name) for name in list(merged) if name in POLICY_FIELDS}}
    return {**merged, "http": http}


def backend_class_for(provider: str) -> type[RemoteRerankBackend[Any]]:
    return CohereBackend if provider == "cohere" else JinaBackend

BackendFactory = Callable[..., RemoteRerankBackend[Any]]


@pytest.fixture
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_backend(server: FakeRerankServer, provider: str) -> Iterator[BackendFactory]:
    made: list[RemoteRerankBackend[Any]] = []

    def factory(**options: Any) -> RemoteRerankBackend[Any]:
        backend = backend_class_for(provider)(
            **backend_options(server.client_options(provider), **options)
        )
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def documents(count: int, prefix: str = "passage") -> list[str]:
    return [f"{prefix} {index} about topic {index % 7}" for index in range(count)]


# -- success and batching ---------------------------------------------------------------------


def test_scores_come_back_in_input_order(make_backend: BackendFactory) -> None:
    backend = make_backend()
    texts = documents(12)
    assert backend.score("what is topic 3", texts) == expected_scores("what is topic 3", texts)
    assert backend.score("q", []) == []


async def test_async_scores_come_back_in_input_order(make_backend: BackendFactory) -> None:
    backend = make_backend()
    texts = documents(12)
    assert await backend.ascore("topic 5", texts) == expected_scores("topic 5", texts)
    await backend.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_long_lists_are_batched_concurrently_and_merged_in_order(
    make_backend: BackendFactory, server: FakeRerankServer, mode: str
) -> None:
    # The server rejects more than 7 documents per request, as a provider would.
    server.configure(max_documents=7, latency=0.05)
    backend = make_backend(max_documents_per_request=7, max_concurrency=2)
    texts = documents(30)
    if mode == "sync":
        scores = backend.score("topic 2", texts)
    else:
        scores = await backend.ascore("topic 2", texts)
        await backend.aclose()
    assert scores == expected_scores("topic 2", texts)
    sizes = [len(request.body["documents"]) for request in server.requests]
    assert sorted(sizes) == [2, 7, 7, 7, 7]
    sent = sorted(doc for request in server.requests for doc in request.body["documents"])
    assert sent == sorted(texts)
    # Batches overlapped, but never more than max_concurrency at once.
    assert server.max_in_flight == 2


def test_a_failing_batch_fails_the_whole_call(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    backend = make_backend(max_documents_per_request=5, max_concurrency=1)
    server.fail_next(Fault("wrong_index"))
    with pytest.raises(BackendResponseError):
        backend.score("q", documents(12))


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_retry_after_is_honoured_on_429(
    make_backend: BackendFactory, server: FakeRerankServer, mode: str
) -> None:
    backend = make_backend()
    server.fail_next(Fault("status", status=429, retry_after="0.3"))
    texts = documents(4)
    if mode == "sync":
        scores = backend.score("q", texts)
    else:
        scores = await backend.ascore("q", texts)
    assert scores == expected_scores("q", texts)
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.3


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_5xx_and_connection_faults_are_retried(
    make_backend: BackendFactory, server: FakeRerankServer, mode: str
) -> None:
    backend = make_backend(max_retries=6)
    server.fail_next(
        Fault("status", status=500),
        Fault("status", status=503),
        Fault("status", status=502, body="<html><body>502 Bad Gateway</body></html>"),
        Fault("disconnect"),
        Fault("truncated"),
    )
    texts = documents(5)
    if mode == "sync":
        scores = backend.score("q", texts)
    else:
        scores = await backend.ascore("q", texts)
    assert scores == expected_scores("q", texts)
    assert len(server.requests) == 6


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_4xx_are_not_retried(
    make_backend: BackendFactory, server: FakeRerankServer, status: int
) -> None:
    backend = make_backend()
    server.fail_next(Fault("status", status=status))
    with pytest.raises(BackendUnavailableError, match=f"HTTP {status}") as caught:
        backend.score("q", documents(3))
    assert caught.value.status_code == status
    assert len(server.requests) == 1


def test_a_wrong_key_is_a_final_401(server: FakeRerankServer, provider: str) -> None:
    options = backend_options(server.client_options(provider), api_key="wrong-key")
    backend = backend_class_for(provider)(**options)
    with pytest.raises(BackendUnavailableError, match="invalid api token") as caught:
        backend.score("q", documents(3))
    assert caught.value.status_code == 401
    assert len(server.requests) == 1


def test_retries_are_bounded(make_backend: BackendFactory, server: FakeRerankServer) -> None:
    backend = make_backend(max_retries=2)
    server.fail_next(*[Fault("status", status=500)] * 3)
    with pytest.raises(BackendUnavailableError, match="after 3 attempts") as caught:
        backend.score("q", documents(3))
    assert caught.value.status_code == 500
    assert len(server.requests) == 3


def test_retries_are_logged(
    make_backend: BackendFactory, server: FakeRerankServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    server.fail_next(Fault("status", status=429, retry_after="0"), Fault("status", status=500))
    with caplog.at_level(logging.INFO, logger="crossrank.backends"):
        backend.score("q", documents(3))
    retries = [
        record.getMessage() for record in caplog.records if "retrying" in record.getMessage()
    ]
    assert len(retries) == 2
    assert "HTTP 429" in retries[0] and "HTTP 500" in retries[1]


def test_a_retry_after_longer_than_allowed_fails_at_once(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    backend = make_backend(retry_after_max=1.0)
    server.fail_next(Fault("status", status=429, retry_after="120"))
    with pytest.raises(BackendUnavailableError, match="retry after 120s") as caught:
        backend.score("q", documents(3))
    assert caught.value.status_code == 429
    assert len(server.requests) == 1


def test_connection_refused_is_unavailable(provider: str) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}" + ("" if provider == "cohere" else "/v1")
    # Construction does no I/O: nothing listens, and nothing fails yet.
    backend = backend_class_for(provider)(
        **backend_options({"api_key": API_KEY, "base_url": base_url}, max_retries=1)
    )
    with pytest.raises(BackendUnavailableError, match="ConnectError") as caught:
        backend.score("q", ["a"])
    assert caught.value.status_code is None


# -- timeouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_slow_answer_times_out_and_is_retried(
    make_backend: BackendFactory, server: FakeRerankServer, mode: str
) -> None:
    backend = make_backend(timeout=0.3)
    server.fail_next(Fault("slow", delay=1.5))
    texts = documents(3)
    if mode == "sync":
        scores = backend.score("q", texts)
    else:
        scores = await backend.ascore("q", texts)
    assert scores == expected_scores("q", texts)
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_always_slow_is_unavailable(
    make_backend: BackendFactory, server: FakeRerankServer, mode: str
) -> None:
    backend = make_backend(timeout=0.2, max_retries=1)
    server.fail_next(Fault("slow", delay=1.0), Fault("slow", delay=1.0))
    with pytest.raises(BackendUnavailableError, match="after 2 attempts"):
        if mode == "sync":
            backend.score("q", documents(3))
        else:
            await backend.ascore("q", documents(3))


# -- untrustworthy answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("malformed", "not (valid )?JSON"),
        ("wrong_index", "outside 0..4"),
        ("duplicate_index", "more than once"),
        ("missing_index", "missing indices"),
        ("nan_score", "non-finite"),
    ],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_untrustworthy_answers_raise_response_errors(
    make_backend: BackendFactory, server: FakeRerankServer, kind: str, message: str, mode: str
) -> None:
    backend = make_backend()
    server.fail_next(Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(BackendResponseError, match=message):
        if mode == "sync":
            backend.score("q", documents(5))
        else:
            await backend.ascore("q", documents(5))
    assert len(server.requests) == 1  # a deterministic bad answer is not worth repeating


def test_response_validation_rules() -> None:
    good = {"results": [{"index": 1, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.9}]}
    assert scores_in_input_order(good, 2, "x") == [0.9, 0.2]
    bad_bodies = [
        ([], "not a JSON object"),
        ({}, "no 'results' list"),
        ({"results": [1]}, "not an object"),
        ({"results": [{"index": "0", "relevance_score": 1}]}, "non-integer index"),
        ({"results": [{"index": True, "relevance_score": 1}]}, "non-integer index"),
        ({"results": [{"index": 0, "relevance_score": "high"}]}, "non-numeric"),
        ({"results": [{"index": 0, "relevance_score": float("inf")}]}, "non-finite"),
        ({"results": [{"index": -1, "relevance_score": 1.0}]}, "outside"),
    ]
    for body, message in bad_bodies:
        with pytest.raises(BackendResponseError, match=message):
            scores_in_input_order(body, 1, "x")


# -- through the engine -----------------------------------------------------------------------


def test_reranker_orders_by_the_providers_scores(server: FakeRerankServer, provider: str) -> None:
    reranker = Reranker(provider, backend_options=backend_options(server.client_options(provider)))
    texts = documents(9)
    result = reranker.rerank("topic 4", texts)
    assert result.report.status == "reranked"
    truth = expected_scores("topic 4", texts)
    assert [item.input_index for item in result.ranked] == sorted(
        range(len(texts)), key=lambda index: -truth[index]
    )
    assert [item.raw_score for item in result.ranked] == sorted(truth, reverse=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failure_falls_back_to_first_stage_or_raises_when_strict(
    make_backend: BackendFactory,
    server: FakeRerankServer,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    backend = make_backend(max_retries=1)
    texts = documents(6)

    async def run(reranker: Reranker) -> Any:
        if mode == "sync":
            return reranker.rerank("q", texts)
        return await reranker.arerank("q", texts)

    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        result = await run(Reranker(backend))
    assert result.report.status == "fallback"
    assert "BackendUnavailableError" in (result.report.error or "")
    assert [item.input_index for item in result.ranked] == list(range(len(texts)))
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1

    server.fail_next(Fault("nan_score"))
    with pytest.raises(BackendResponseError):
        await run(Reranker(backend, strict=True))

    # And the same backend recovers as soon as the server does.
    result = await run(Reranker(backend, strict=True))
    assert result.report.status == "reranked"


# -- concurrency and cancellation -------------------------------------------------------------


async def test_a_hundred_concurrent_calls_all_come_back_right(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    server.configure(latency=0.01, rate_429=0.2)
    backend = make_backend(max_retries=8, max_documents_per_request=10)
    reranker = Reranker(backend, strict=True)
    queries = [f"query number {index}" for index in range(100)]
    texts = documents(25)
    results = await asyncio.gather(*(reranker.arerank(query, texts) for query in queries))
    for query, result in zip(queries, results, strict=True):
        truth = expected_scores(query, texts)
        assert [item.raw_score for item in result.ranked] == sorted(truth, reverse=True)
        assert sorted(item.input_index for item in result.ranked) == list(range(len(texts)))
    assert server.max_in_flight > 1  # the calls really overlapped
    await backend.aclose()


async def test_cancelling_a_call_leaves_nothing_stuck(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    backend = make_backend(max_documents_per_request=4, max_concurrency=2)
    reranker = Reranker(backend, strict=True)
    server.fail_next(Fault("slow", delay=2.0), Fault("slow", delay=2.0))
    texts = documents(10)
    task = asyncio.create_task(reranker.arerank("q", texts))
    deadline = time.monotonic() + 10
    while server.in_flight < 2:  # both batches are on the wire
        assert time.monotonic() < deadline, "the batches never reached the server"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # No sibling request task survives the cancelled call.
    assert [other for other in asyncio.all_tasks() if other is not asyncio.current_task()] == []
    result = await asyncio.wait_for(reranker.arerank("q", texts), timeout=10)
    assert result.report.status == "reranked"
    assert [item.raw_score for item in result.ranked] == sorted(
        expected_scores("q", texts), reverse=True
    )
    await backend.aclose()


async def test_async_scoring_does_not_block_the_loop(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    server.configure(latency=0.3)
    backend = make_backend()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await backend.ascore("q", documents(3))
    ticking.cancel()
    # While the request waited 0.3 s on the server, the loop kept running other work.
    assert ticks >= 5
    await backend.aclose()


# -- secrets ----------------------------------------------------------------------------------


async def test_the_api_key_never_leaks(
    make_backend: BackendFactory,
    server: FakeRerankServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and the SDK included
    backend = make_backend(max_retries=1)
    seen: list[str] = [repr(backend), str(backend), json.dumps(backend.to_config())]
    # A retried failure, a proxy that echoes the Authorization header, and bad answers.
    server.fail_next(
        Fault("status", status=500, echo_authorization=True),
        Fault("status", status=400, echo_authorization=True),
    )
    with pytest.raises(BackendUnavailableError) as unavailable:
        backend.score("q", documents(3))
    server.fail_next(Fault("status", status=429, retry_after="0", echo_authorization=True))
    await backend.ascore("q", documents(3))
    server.fail_next(Fault("malformed"))
    with pytest.raises(BackendResponseError) as malformed:
        await backend.ascore("q", documents(3))
    server.fail_next(Fault("status", status=401, echo_authorization=True))
    fallback = Reranker(backend).rerank("q", documents(3))
    server.fail_next(Fault("status", status=403, echo_authorization=True))
    with pytest.raises(BackendUnavailableError) as strict:
        await Reranker(backend, strict=True).arerank("q", documents(3))
    for error in (unavailable.value, malformed.value, strict.value):
        seen += [str(error), repr(error), str(error.args)]
    seen.append(fallback.report.error or "")
    assert "Bearer ***" in str(unavailable.value)  # the echo was there, and was scrubbed
    captured = capsys.readouterr()
    seen += [caplog.text, captured.out, captured.err]
    seen += [record.getMessage() + repr(record.args) for record in caplog.records]
    assert all(API_KEY not in text for text in seen)
    assert any(record.name.startswith("httpx") for record in caplog.records)
    await backend.aclose()


def test_backends_refuse_to_pickle_their_key(make_backend: BackendFactory) -> None:
    backend = make_backend()
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(backend)
    with pytest.raises(TypeError):
        pickle.dumps(Secret.from_token(API_KEY))
    token = Secret.from_token(API_KEY)
    assert API_KEY not in f"{token} {token!r} {token:>40} {backend!r}"


def test_a_backend_with_an_env_key_pickles_as_its_config(
    server: FakeRerankServer, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRK_TEST_KEY", API_KEY)
    options = backend_options(server.client_options(provider), max_documents_per_request=3)
    options["api_key"] = Secret.from_env_var("CRK_TEST_KEY")
    backend = backend_class_for(provider)(**options)
    data = pickle.dumps(backend)
    assert API_KEY.encode() not in data
    copy = pickle.loads(data)
    assert copy.to_config() == backend.to_config()
    assert copy.score("q", documents(5)) == expected_scores("q", documents(5))
    copy.close()


def test_redaction_rules() -> None:
    text = f"auth was Bearer {API_KEY}; key={API_KEY}; other Bearer abc123, done"
    cleaned = redact(text, [API_KEY])
    assert API_KEY not in cleaned and "abc123" not in cleaned
    assert cleaned.endswith(", done")


def test_credentials_in_the_base_url_are_hidden(server: FakeRerankServer, provider: str) -> None:
    base_url = server.client_options(provider)["base_url"].replace(  # type: ignore[arg-type]
        "http://", "http://user:hunter2@"
    )
    backend = backend_class_for(provider)(api_key=API_KEY, base_url=base_url)
    assert "hunter2" not in repr(backend)
    assert "hunter2" not in json.dumps(backend.to_config())


def test_to_config_rebuilds_an_equivalent_backend(make_backend: BackendFactory) -> None:
    backend = make_backend(max_tokens_per_doc=256, max_documents_per_request=50, deadline_s=9)
    config = backend.to_config()
    assert "api_key" not in config  # a token key is never saved
    assert config["http"]["deadline_s"] == 9.0
    rebuilt = type(backend)(api_key=API_KEY, **json.loads(json.dumps(config)))
    assert rebuilt.to_config() == config
    assert rebuilt.policy == backend.policy


# -- windowing --------------------------------------------------------------------------------


def test_max_tokens_per_doc_windows_long_documents(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    backend = make_backend(max_tokens_per_doc=16)
    long_text = " ".join(f"word{index}" for index in range(60))  # 120 approximate tokens
    texts = ["short one", long_text, "short two"]
    result = Reranker(backend, strict=True).rerank("word42", texts)
    assert result.report.status == "reranked"
    assert result.report.windows_scored > len(texts)
    sent = [doc for request in server.requests for doc in request.body["documents"]]
    assert len(sent) == result.report.windows_scored
    assert all(len(approximate_token_spans(doc)) <= 16 for doc in sent)
    assert sorted(item.input_index for item in result.ranked) == [0, 1, 2]


def test_without_a_token_limit_nothing_is_windowed(
    make_backend: BackendFactory, server: FakeRerankServer
) -> None:
    backend = make_backend()
    long_text = " ".join(f"word{index}" for index in range(2000))
    result = Reranker(backend, strict=True).rerank("q", ["a", long_text])
    assert result.report.windows_scored == 2
    assert len(server.requests) == 1


def test_approximate_tokens_over_count_on_purpose() -> None:
    text = "Tokenization, of 東京 text!"
    pieces = [text[start:end] for start, end in approximate_token_spans(text)]
    assert pieces == ["Toke", "niza", "tion", ",", "of", "東", "京", "text", "!"]


# -- small pieces -----------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = time.time()
    in_ten_seconds = email.utils.formatdate(now + 10, usegmt=True)
    assert parse_retry_after(in_ten_seconds, now=now) == pytest.approx(10, abs=1)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", 0),
        ("connect_timeout", -1.0),
        ("max_retries", -1),
        ("max_documents_per_request", 0),
        ("max_concurrency", True),
        ("max_tokens_per_doc", 0),
        ("backoff_base", float("nan")),
        ("base_url", "ftp://example.com"),
        ("base_url", "not a url"),
        ("model", ""),
    ],
)
def test_bad_options_are_named(provider: str, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option.split("_")[0]):
        backend_class_for(provider)(**backend_options({"api_key": API_KEY}, **{option: value}))
