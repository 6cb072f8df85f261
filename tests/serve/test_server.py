"""A real server on 127.0.0.1: standard clients, limits, auth, metrics, readiness, fuzzing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from crossrank import Reranker
from crossrank.secrets import Secret
from crossrank.serve.app import create_app
from crossrank.serve.engine_options import build_reranker
from crossrank.serve.server import BackgroundServer, wait_ready
from crossrank.serve.settings import ServeSettings
from tests.serve.backends import GatedKeywordBackend, SlowKeywordBackend
from tests.serve.conftest import DOCUMENTS, QUERY, serving
from tests.support.backends import KeywordBackend


@pytest.fixture(scope="module")
def tiny_server(tiny_config: dict[str, Any]) -> Iterator[BackgroundServer]:
    with serving(build_reranker(tiny_config), ServeSettings(model_name="tiny")) as server:
        yield server


@pytest.fixture(scope="module")
def keyword_server() -> Iterator[BackgroundServer]:
    settings = ServeSettings(max_documents=8, max_body_bytes=4096)
    with serving(Reranker(KeywordBackend()), settings) as server:
        yield server


def _expected(config: dict[str, Any]) -> dict[int, float]:
    """Input index -> score from the in-process engine with the same config."""
    result = build_reranker(config).rerank(QUERY, DOCUMENTS)
    return {item.input_index: item.score for item in result}


def test_cohere_sdk_matches_in_process(
    tiny_server: BackgroundServer, tiny_config: dict[str, Any]
) -> None:
    cohere = pytest.importorskip("cohere")
    expected = _expected(tiny_config)
    client = cohere.ClientV2(api_key="unused", base_url=tiny_server.url)
    response = client.rerank(model="tiny", query=QUERY, documents=DOCUMENTS)
    assert [item.index for item in response.results] == list(expected)
    for item in response.results:
        assert item.relevance_score == pytest.approx(expected[item.index], abs=1e-6)

    top = client.rerank(model="tiny", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert [item.index for item in top.results] == list(expected)[:2]


def test_crossrank_cohere_backend_matches_in_process(
    tiny_server: BackgroundServer, tiny_config: dict[str, Any]
) -> None:
    pytest.importorskip("cohere")
    from crossrank.backends import create_backend

    expected = _expected(tiny_config)
    backend = create_backend("cohere", model="tiny", api_key="unused", base_url=tiny_server.url)
    scores = backend.score(QUERY, DOCUMENTS)
    assert scores == pytest.approx([expected[index] for index in range(len(DOCUMENTS))], abs=1e-6)
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    assert order == list(expected)


def test_haystack_tei_ranker_matches_in_process(
    tiny_server: BackgroundServer, tiny_config: dict[str, Any]
) -> None:
    rankers = pytest.importorskip("haystack_integrations.components.rankers.huggingface_api")
    from haystack import Document

    expected = _expected(tiny_config)
    ranker = rankers.HuggingFaceTEIRanker(url=tiny_server.url, top_k=10, token=None, max_retries=1)
    documents = [Document(content=text) for text in DOCUMENTS]
    ranked = ranker.run(query=QUERY, documents=documents)["documents"]
    indices = [DOCUMENTS.index(document.content) for document in ranked]
    assert indices == list(expected)
    for index, document in zip(indices, ranked, strict=True):
        assert document.score == pytest.approx(expected[index], abs=1e-6)


def test_extras_first_stage_scores_and_report(keyword_server: BackgroundServer) -> None:
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    body = {"model": "m", "query": QUERY, "documents": DOCUMENTS}
    body.update(first_stage_scores=scores, report=True)
    answer = httpx.post(f"{keyword_server.url}/v2/rerank", json=body).json()
    expected = Reranker(KeywordBackend()).rerank(QUERY, DOCUMENTS)
    assert [r["index"] for r in answer["results"]] == [item.input_index for item in expected]
    report = answer["report"]
    assert report["status"] == "reranked" and report["fallback"] is False
    assert {"validate", "score", "total"} <= set(report["timings_ms"])

    tei = httpx.post(
        f"{keyword_server.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "report": True}
    )
    assert json.loads(tei.headers["x-crossrank-report"])["status"] == "reranked"
    assert tei.headers["x-crossrank-status"] == "reranked"


def test_health_ready_and_metrics(keyword_server: BackgroundServer) -> None:
    url = keyword_server.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ready").status_code == 200
    httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3]})
    httpx.post(f"{url}/v2/rerank", json={"query": QUERY})
    metrics = httpx.get(f"{url}/metrics").text
    assert 'crossrank_requests_total{endpoint="/v2/rerank",status="200"}' in metrics
    assert 'crossrank_requests_total{endpoint="/v2/rerank",status="400"}' in metrics
    assert 'crossrank_stage_seconds_count{stage="score"}' in metrics
    assert 'crossrank_stage_seconds_count{stage="queue"}' in metrics
    assert 'crossrank_rerank_outcomes_total{status="reranked"}' in metrics
    assert "crossrank_queue_depth" in metrics and "crossrank_request_documents_bucket" in metrics
    assert "crossrank_microbatch_groups_total" in metrics


def test_limits_answer_413(keyword_server: BackgroundServer) -> None:
    url = keyword_server.url
    too_many = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["a"] * 9})
    assert too_many.status_code == 413 and too_many.json()["field"] == "documents"
    too_big = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": ["x" * 5000]})
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]


def test_not_ready_until_warm() -> None:
    backend = GatedKeywordBackend()
    settings = ServeSettings(retry_after_s=2)
    server = BackgroundServer(create_app(Reranker(backend), settings), settings).start()
    try:
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
        early = httpx.post(f"{server.url}/v2/rerank", json={"query": QUERY, "documents": ["a"]})
        assert early.status_code == 503
        backend.gate.set()
        wait_ready(server.url, timeout_s=30)
        assert httpx.post(
            f"{server.url}/v2/rerank", json={"query": QUERY, "documents": ["a"]}
        ).is_success
    finally:
        backend.gate.set()
        server.stop()


def test_bearer_auth(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-serve-test-7f3a"
    settings = ServeSettings(api_keys=(Secret.from_token(key), Secret.from_token("other")))
    assert key not in repr(settings)
    with serving(Reranker(KeywordBackend()), settings) as server:
        body = {"query": QUERY, "documents": DOCUMENTS}
        missing = httpx.post(f"{server.url}/v2/rerank", json=body)
        wrong = httpx.post(
            f"{server.url}/v2/rerank", json=body, headers={"Authorization": "Bearer nope"}
        )
        right = httpx.post(
            f"{server.url}/v2/rerank", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert missing.status_code == wrong.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200
        assert key not in missing.text and key not in wrong.text
    assert key not in caplog.text


def test_drain_finishes_admitted_requests() -> None:
    settings = ServeSettings(drain_timeout_s=10)
    app = create_app(Reranker(SlowKeywordBackend(delay_s=0.6)), settings, warm_up=False)
    server = BackgroundServer(app, settings).start()
    answers: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{server.url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=10
            )
        )
    )
    worker.start()
    time.sleep(0.2)  # the request is admitted and scoring
    server.stop()
    worker.join(10)
    assert len(answers) == 1 and answers[0].status_code == 200
    assert len(answers[0].json()["results"]) == len(DOCUMENTS)


def test_fuzzed_bodies_get_4xx_never_5xx(keyword_server: BackgroundServer) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    values = st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    )
    fields = st.sampled_from(
        [
            "query",
            "documents",
            "texts",
            "top_n",
            "model",
            "first_stage_scores",
            "report",
            "raw_scores",
            "return_text",
            "truncate",
            "truncation_direction",
            "max_tokens_per_doc",
        ]
    )
    near_valid = st.fixed_dictionaries(
        {
            "query": st.text(max_size=20) | values,
            "documents": st.lists(st.text(max_size=20), max_size=4),
        }
    ).flatmap(
        lambda base: st.dictionaries(fields, values, max_size=4).map(
            lambda extra: {**base, **extra}
        )
    )
    bodies = (
        values.map(lambda value: json.dumps(value).encode())
        | near_valid.map(lambda value: json.dumps(value).encode())
        | st.binary(max_size=64)
    )
    client = httpx.Client(base_url=keyword_server.url, timeout=10)

    @hypothesis.settings(max_examples=120, deadline=None, database=None)
    @hypothesis.given(body=bodies, path=st.sampled_from(["/v2/rerank", "/rerank"]))
    def check(body: bytes, path: str) -> None:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code < 500, (body, response.text)
        if response.status_code != 200:
            assert 400 <= response.status_code < 500
            assert response.json()  # an error body, not an empty or HTML page

    try:
        check()
    finally:
        client.close()


def test_concurrent_requests_share_forward_passes(tiny_config: dict[str, Any]) -> None:
    """With micro-batching on, concurrent requests meet in one forward pass, scores unchanged."""
    import asyncio

    options = dict(tiny_config["backend_options"], micro_batch=True, micro_batch_wait_s=0.1)
    config = dict(tiny_config, backend_options=options)
    queries = [f"{QUERY} {i}" for i in range(8)]
    with serving(build_reranker(config), ServeSettings(max_in_flight=8)) as server:

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post("/v2/rerank", json={"query": q, "documents": DOCUMENTS})
                        for q in queries
                    )
                )

        before = _counter(
            httpx.get(f"{server.url}/metrics").text, "crossrank_microbatch_groups_total"
        )
        answers = asyncio.run(fire())
        metrics = httpx.get(f"{server.url}/metrics").text
    groups = _counter(metrics, "crossrank_microbatch_groups_total") - before
    assert 1 <= groups < len(queries)
    reference = build_reranker(tiny_config)
    for query, answer in zip(queries, answers, strict=True):
        expected = reference.rerank(query, DOCUMENTS)
        got = answer.json()["results"]
        assert [r["index"] for r in got] == [item.input_index for item in expected]
        assert [r["relevance_score"] for r in got] == pytest.approx(expected.scores, abs=1e-6)


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_opentelemetry_spans_per_stage() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    trace.set_tracer_provider(TracerProvider())  # ignored (with a warning) if one is set
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.skip("a tracer provider of another kind is installed in this process")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with serving(Reranker(KeywordBackend())) as server:
        httpx.post(f"{server.url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    names = {span.name for span in exporter.get_finished_spans()}
    assert {"crossrank.rerank", "crossrank.validate", "crossrank.score"} <= names
    parent = next(s for s in exporter.get_finished_spans() if s.name == "crossrank.rerank")
    assert parent.attributes["crossrank.status"] == "reranked"


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "q", "documents": ["a \\ud800 b", "c"], "texts": ["a \\ud800 b"]}',
        b'{"query": "q\\udfff", "documents": ["a"], "texts": ["a"]}',
        b"[" * 2000 + b"]" * 2000,
        b'{"query": "q", "documents": ["a"], "texts": ["a"], "top_n": 1e400}',
        b'{"query": "q", "documents": ["a"], "texts": ["a"], "first_stage_scores": [NaN]}',
        b'{"query": "q", "documents": [], "texts": []}',
        b"\xff\xfe\x00",
    ],
)
@pytest.mark.parametrize("path", ["/v2/rerank", "/rerank"])
def test_nasty_bodies_get_4xx_or_200(
    keyword_server: BackgroundServer, body: bytes, path: str
) -> None:
    response = httpx.post(f"{keyword_server.url}{path}", content=body)
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
