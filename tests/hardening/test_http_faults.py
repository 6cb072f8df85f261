"""HTTP faults an outside probe found (issue 19), each through both clients: the Cohere SDK
and plain httpx (Jina, and with it every provider spec).

Each test drives a real local server on 127.0.0.1. Every one of them failed before the fix it
guards: sync calls outlived ``timeout`` against a server that drips its body, clients of
closed event loops kept their sockets, keys echoed in a 2xx body or a response header came
back in errors and DEBUG logs, a lone surrogate was reported as a bad response, and the
Cohere path accepted an index of ``6.0`` or ``"5"``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crossrank import (
    BackendResponseError,
    BackendUnavailableError,
    InvalidInputError,
    Reranker,
)
from crossrank.backends.cohere import CohereBackend
from crossrank.backends.jina import JinaBackend
from tests.support.fake_rerank_server import FakeRerankServer, Fault, expected_scores

API_KEY = "crk-hardening-51f0d2b7e3-NEVER-SHOWN"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "connect_timeout": 2.0}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: FakeRerankServer) -> None:
    server.reset()


@pytest.fixture(params=["cohere", "jina"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(server: FakeRerankServer, provider: str, **http: Any) -> Any:
    backend_class = CohereBackend if provider == "cohere" else JinaBackend
    return backend_class(**server.client_options(provider), http={**FAST, **http})


async def score(backend: Any, mode: str, texts: list[str]) -> list[float]:
    if mode == "sync":
        return backend.score("q", texts)  # type: ignore[no-any-return]
    return await backend.ascore("q", texts)  # type: ignore[no-any-return]


# -- 1. total timeouts and a per-call deadline ----------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_timeout_bounds_a_body_that_drips_slowly(
    server: FakeRerankServer, provider: str, mode: str
) -> None:
    # Every chunk arrives well within the timeout; the whole body would take 5 s.
    backend = make(server, provider, timeout=1.0, max_retries=0)
    server.fail_next(Fault("drip", delay=0.25, chunks=20))
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"within timeout=1s") as raised:
        await score(backend, mode, ["a", "b"])
    assert time.monotonic() - started < 2.5
    assert "deadline" not in str(raised.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_deadline_bounds_the_call_across_retries_and_says_so(
    server: FakeRerankServer, provider: str, mode: str
) -> None:
    backend = make(server, provider, timeout=0.4, max_retries=5, deadline_s=1.0)
    server.fail_next(*[Fault("slow", delay=1.0)] * 6)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"deadline_s=1s") as raised:
        await score(backend, mode, ["a", "b"])
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 1.8
    assert len(server.requests) <= 3  # the deadline, not the retry count, ended the call
    assert "retries exhausted" not in str(raised.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_deadline_covers_every_batch_of_a_call(
    server: FakeRerankServer, mode: str
) -> None:
    backend = make(server, "jina", timeout=5.0, deadline_s=0.8, max_concurrency=1)
    backend.max_documents_per_request = 2
    server.fail_next(Fault("slow", delay=0.5), Fault("slow", delay=0.5), Fault("slow", delay=0.5))
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"deadline_s=0\.8s"):
        await score(backend, mode, ["a", "b", "c", "d", "e", "f"])
    assert time.monotonic() - started < 1.5


async def test_waiting_for_a_connection_counts_against_the_deadline(
    server: FakeRerankServer,
) -> None:
    # One connection, two batches: the second waits for the first (0.6 s), then has 0.3 s.
    backend = make(server, "jina", deadline_s=0.9, max_connections=1, max_concurrency=2)
    backend.max_documents_per_request = 2
    server.fail_next(Fault("slow", delay=0.6), Fault("slow", delay=0.6))
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"deadline_s=0\.9s"):
        await backend.ascore("q", ["a", "b", "c", "d"])
    assert time.monotonic() - started < 1.15
    await backend.aclose()


# -- 2. clients that belong to a loop are closed with it ------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds through /proc")
def test_fds_stay_flat_over_two_hundred_asyncio_runs(
    server: FakeRerankServer, provider: str
) -> None:
    backend = make(server, provider)
    reranker = Reranker(backend, strict=True)
    for _ in range(5):  # warm up: imports, the sync machinery, first allocations
        asyncio.run(reranker.arerank("q", ["a", "b"]))
    gc.collect()
    before = open_fds()
    for _ in range(200):
        result = asyncio.run(reranker.arerank("q", ["a", "b"]))
        assert result.report.status == "reranked"
    gc.collect()
    assert open_fds() - before <= 3
    assert len(backend._async_clients) == 0  # each loop's client went with its loop


def test_a_client_of_a_loop_closed_without_shutdown_is_dropped_at_the_next_call(
    server: FakeRerankServer, provider: str
) -> None:
    backend = make(server, provider)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.ascore("q", ["a"]))
    loop.close()  # no shutdown_asyncgens: the client is not closed by its loop
    assert len(backend._async_clients) == 1
    assert asyncio.run(backend.ascore("q", ["a"])) == expected_scores("q", ["a"])
    assert len(backend._async_clients) == 0  # dropped, and the new loop's closed with it
    backend.close()


async def test_close_and_async_context_manager_release_the_loops_client(
    server: FakeRerankServer, provider: str
) -> None:
    async with make(server, provider) as backend:
        assert await backend.ascore("q", ["a"]) == expected_scores("q", ["a"])
        assert len(backend._async_clients) == 1
    assert len(backend._async_clients) == 0
    assert backend._sync_client is None
    # Closed is not broken: the next call opens a new client.
    assert await backend.ascore("q", ["a"]) == expected_scores("q", ["a"])
    await backend.aclose()


# -- 3. secrets echoed back in a 2xx body ---------------------------------------------------------


def test_a_key_echoed_in_a_successful_body_is_scrubbed_everywhere(
    server: FakeRerankServer, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"results": [{"index": 0, "relevance_score": API_KEY}]})
    backend = make(server, provider, max_retries=0)
    seen: list[str] = []
    with caplog.at_level(logging.INFO, logger="crossrank"):
        server.fail_next(Fault("status", status=200, body=body))
        fallback = Reranker(backend).rerank("q", ["a"])
        server.fail_next(Fault("status", status=200, body=body))
        with pytest.raises(BackendResponseError) as raised:
            Reranker(backend, strict=True).rerank("q", ["a"])
    assert fallback.report.status == "fallback"
    assert "non-numeric relevance_score" in (fallback.report.error or "")
    seen += [fallback.report.error or "", str(raised.value), repr(raised.value), caplog.text]
    assert [text for text in seen if API_KEY in text] == []
    assert any("'***'" in text for text in seen)


# -- 4. the HTTP stack's own DEBUG logging --------------------------------------------------------


def test_headers_echoed_by_a_server_do_not_leak_through_httpcore_debug_logs(
    server: FakeRerankServer, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: httpcore logs every header it reads
    backend = make(server, provider)
    server.fail_next(Fault("echo_headers"))
    assert backend.score("q", ["a", "b"]) == expected_scores("q", ["a", "b"])
    stack = [record for record in caplog.records if record.name.startswith("httpcore")]
    assert any(b"X-Upstream-Key" in str(record.getMessage()).encode() for record in stack)
    leaks = [record.getMessage() for record in caplog.records if API_KEY in record.getMessage()]
    assert leaks == []
    assert API_KEY not in caplog.text
    backend.close()


# -- 5. text that cannot be encoded is the caller's input, not a bad response ---------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_lone_surrogate_is_refused_naming_the_text_before_any_request(
    server: FakeRerankServer, provider: str, mode: str
) -> None:
    backend = make(server, provider)
    with pytest.raises(InvalidInputError, match=r"text #1: .*U\+D800 at character 4"):
        await score(backend, mode, ["fine", "bad \ud800 text"])
    reranker = Reranker(backend)
    # Through the engine the candidate is refused at validation, naming its index.
    with pytest.raises(InvalidInputError, match=r"candidate 1 .*lone surrogate"):
        if mode == "sync":
            reranker.rerank("q", ["fine", "bad \ud800"])
        else:
            await reranker.arerank("q", ["fine", "bad \ud800"])
    assert server.requests == []  # nothing was sent
    await backend.aclose()


# -- 7. index formats: both paths refuse what is not a JSON integer -------------------------------


@pytest.mark.parametrize("index", [1.0, "1", 1.5, None])
def test_an_index_that_is_not_a_json_integer_is_refused_by_both_paths(
    server: FakeRerankServer, provider: str, index: Any
) -> None:
    results = [{"index": 0, "relevance_score": 0.5}, {"index": index, "relevance_score": 0.1}]
    body = json.dumps({"results": results})
    server.fail_next(Fault("status", status=200, body=body))
    with pytest.raises(BackendResponseError, match="non-integer index"):
        make(server, provider, max_retries=0).score("q", ["a", "b"])
