"""The listwise LLM backend against a real chat-completions server on 127.0.0.1.

The server (tests/support/fake_chat_server.py) reads the prompt the backend sends and ranks
the passages with an oracle, so the order that comes back is known: a judged query makes one
permutation correct. It also answers with garbage, errors, slow or cut-off bodies on demand.
The engine-level contract is the one every rerank API meets (test_providers.py): a failure
falls back flagged or raises when strict, 429 / 5xx / timeouts are retried, malformed bodies
are refused, the key never shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest

from crossrank import BackendResponseError, BackendUnavailableError, ConfigurationError, Reranker
from crossrank.backends import create_backend
from crossrank.backends.base import Ranking
from crossrank.backends.listwise import truncate_tokens
from crossrank.backends.llm import ListwiseStats, LlmBackend
from crossrank.backends.wire import approximate_token_spans
from crossrank.secrets import Secret
from tests.support.fake_chat_server import CHAT_PATH, FakeChatServer, Fault, hashed_relevance
from tests.support.paths import require_shared_data

API_KEY = "sk-crossrank-llm-7c1d2e3f4a-DO-NOT-LEAK"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "connect_timeout": 2.0}


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: FakeChatServer) -> None:
    server.reset()
    server.configure(garbage_rate=0.0, latency=0.0)


def backend_options(server: FakeChatServer, **more: Any) -> dict[str, Any]:
    http = {name: more.pop(name) for name in list(more) if name in ("max_retries", "timeout")}
    return {
        "model": "ranker-1",
        "api_key": API_KEY,
        "base_url": server.base_url,
        "http": {**FAST, **http, **more.pop("http", {})},
        **more,
    }


def backend(server: FakeChatServer, **more: Any) -> LlmBackend:
    return LlmBackend(**backend_options(server, **more))


def reranker(
    server: FakeChatServer, *, strict: bool = False, top_n: int | None = None, **more: Any
) -> Reranker:
    return Reranker(
        "llm", backend_options=backend_options(server, **more), strict=strict, top_n=top_n
    )


def texts(count: int) -> list[str]:
    return [f"passage {index} about topic {index % 7}" for index in range(count)]


def hashed_order(query: str, documents: list[str]) -> list[int]:
    return sorted(range(len(documents)), key=lambda i: -hashed_relevance(query, documents[i]))


async def call(ranker: Reranker, mode: str, query: str, documents: list[str]) -> Any:
    if mode == "sync":
        return ranker.rerank(query, documents)
    return await ranker.arerank(query, documents)


def seen_text(passage: str, budget: int = 300) -> str:
    """The passage as the prompt shows it: cut to the token budget, on one line."""
    return " ".join(truncate_tokens(passage, budget, approximate_token_spans).split())


# -- wire format ------------------------------------------------------------------------------


def test_request_follows_the_chat_completions_wire_format(server: FakeChatServer) -> None:
    llm = backend(server, extra_body={"seed": 7, "max_tokens": 200})
    ranking = llm.score("topic 3", texts(3))
    assert isinstance(ranking, Ranking)
    (request,) = server.requests
    assert request.path == CHAT_PATH
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    body = request.body
    assert body["model"] == "ranker-1"
    assert body["temperature"] == 0.0
    assert body["seed"] == 7 and body["max_tokens"] == 200
    assert [message["role"] for message in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "Query: topic 3" in user
    assert all(f"[{n + 1}] {text}" in user for n, text in enumerate(texts(3)))
    # The answer is the oracle's order; ranks put the best first.
    best_first = [index for _, index in sorted(zip(ranking.ranks, range(3), strict=True))]
    assert best_first == hashed_order("topic 3", texts(3))


def test_no_key_sends_no_authorization_and_openai_api_key_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeChatServer() as open_server:  # a local server that takes no key (Ollama...)
        LlmBackend("llama3", base_url=open_server.base_url, http=FAST).score("q", texts(2))
        assert "Authorization" not in open_server.requests[0].headers
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        llm = LlmBackend("llama3", base_url=open_server.base_url, http=FAST)
        llm.score("q", texts(2))
        assert open_server.requests[1].headers["Authorization"] == f"Bearer {API_KEY}"
        assert llm.to_config()["api_key"] == {
            "type": "env_var",
            "env_vars": ["OPENAI_API_KEY"],
            "strict": False,
        }


def test_passages_are_cut_to_the_token_budget(server: FakeChatServer) -> None:
    long_passage = "word " * 400
    backend(server, passage_tokens=8).score("q", [long_passage, "short one"])
    user = server.requests[0].body["messages"][1]["content"]
    assert "[1] word word word word word word word word\n" in user


def test_one_candidate_needs_no_call_and_none_gives_an_empty_ranking(
    server: FakeChatServer,
) -> None:
    llm = backend(server)
    assert llm.score("q", ["only"]) == Ranking((1,))
    assert llm.score("q", []) == Ranking(())
    assert server.requests == []


# -- the floors -------------------------------------------------------------------------------


def judged_candidates(count: int) -> tuple[list[str], dict[str, float], list[int]]:
    """Candidates, the server's judged preference, and the one correct order (best first)."""
    documents = [f"document {index}: {'relevant ' * (index % 4)}filler" for index in range(count)]
    grade = {index: (index * 37) % 5 for index in range(count)}
    truth = sorted(range(count), key=lambda index: (-grade[index], index))
    preference = {documents[index]: float(count - place) for place, index in enumerate(truth)}
    return documents, preference, truth


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_correct_answers_give_the_judged_permutation(
    server: FakeChatServer, mode: str
) -> None:
    documents, preference, truth = judged_candidates(45)
    server.judge("judged query", preference)
    one_pass = await call(reranker(server, strict=True), mode, "judged query", documents)
    assert one_pass.report.scores_from_ranks
    # One pass is RankGPT's: its top window - step places are exact.
    assert [item.input_index for item in one_pass.ranked][:10] == truth[:10]
    assert len(server.requests) == 4  # (25,45) (15,35) (5,25) (0,15)
    server.reset()
    full = await call(reranker(server, strict=True, passes=10), mode, "judged query", documents)
    assert [item.input_index for item in full.ranked] == truth
    assert full.report.status == "reranked"


@pytest.mark.shared_data
def test_judged_beir_queries_come_back_in_their_judged_order(server: FakeChatServer) -> None:
    """Real judged queries (ADI), BM25's top 40 each: the sliding window returns qrels order."""
    pytest.importorskip("bm25s")
    from crossrank.eval.beir import load_beir
    from crossrank.eval.bm25 import BM25Index

    collection = load_beir(require_shared_data("adi"))
    doc_ids = list(collection.corpus)
    index = BM25Index([collection.corpus[doc_id].full_text for doc_id in doc_ids])
    llm = backend(server, passes=5)
    checked = 0
    for query_id in collection.judged_query_ids[:12]:
        query = " ".join(collection.queries[query_id].split())
        hits = [doc_ids[hit.index] for hit in index.search(query, k=40)]
        candidates = list(dict.fromkeys(hits))
        documents = [collection.corpus[doc_id].full_text for doc_id in candidates]
        if len({seen_text(text) for text in documents}) < len(documents) or len(documents) < 21:
            continue  # a correct permutation needs distinct passages and at least two windows
        qrels = collection.qrels[query_id]
        truth = sorted(
            range(len(candidates)), key=lambda i: (-qrels.get(candidates[i], 0), i)
        )
        server.judge(
            query,
            {seen_text(documents[i]): float(len(truth) - place) for place, i in enumerate(truth)},
        )
        ranking = llm.score(query, documents)
        places = sorted(zip(ranking.ranks, range(len(documents)), strict=True))
        assert [index for _, index in places] == truth
        stats = llm.last_call_stats
        assert stats is not None and not stats.repairs
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_garbage_one_time_in_five_loses_nothing_and_flags_every_repair(
    server: FakeChatServer, mode: str
) -> None:
    server.configure(garbage_rate=0.2)
    seen: list[ListwiseStats] = []
    llm = backend(server, passes=2, stats_callback=seen.append)
    ranker = Reranker(llm, strict=True)
    for query_number in range(12):
        documents = texts(35 + query_number)
        result = await call(ranker, mode, f"query {query_number}", documents)
        assert result.report.status == "reranked"
        assert sorted(item.input_index for item in result.ranked) == list(range(len(documents)))
    garbage = [request for request in server.requests if request.garbage]
    assert len(garbage) > 5
    repairs = [repair for stats in seen for repair in stats.repairs]
    assert len(seen) == 12
    assert len(repairs) == len(garbage)
    assert sum(stats.calls for stats in seen) == len(server.requests)


# -- stats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_calls_and_tokens_per_query_are_reported(server: FakeChatServer, mode: str) -> None:
    llm = backend(server)
    documents = texts(30)
    if mode == "sync":
        llm.score("topic 2", documents)
    else:
        await llm.ascore("topic 2", documents)
    stats = llm.last_call_stats
    assert stats is not None
    assert stats.calls == 2 == len(server.requests)
    usage = [json.loads(json.dumps(r.body)) for r in server.requests]
    assert stats.candidates == 30
    prompt_words = sum(
        len(str(message["content"]).split()) for body in usage for message in body["messages"]
    )
    assert stats.prompt_tokens == prompt_words
    assert stats.completion_tokens > 0
    assert stats.total_tokens == stats.prompt_tokens + stats.completion_tokens
    assert json.loads(json.dumps(stats.as_dict()))["llm_calls"] == 2
    assert llm.call_stats() == stats.as_dict()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_engine_report_carries_calls_and_tokens(
    server: FakeChatServer, mode: str
) -> None:
    result = await call(reranker(server), mode, "topic 2", texts(30))
    stats = result.report.backend_stats
    assert result.report.status == "reranked" and result.report.scores_from_ranks
    assert stats is not None and stats["llm_calls"] == 2 == len(server.requests)
    assert stats["total_tokens"] == stats["prompt_tokens"] + stats["completion_tokens"] > 0
    with_budget = Reranker("llm", backend_options=backend_options(server), latency_budget_ms=6e4)
    budgeted = await call(with_budget, mode, "topic 2", texts(30))
    assert budgeted.report.budget is not None and budgeted.report.budget.reranked == 30


async def test_stats_belong_to_the_task_that_made_the_call(server: FakeChatServer) -> None:
    llm = backend(server)

    async def one(count: int) -> int:
        await llm.ascore("q", texts(count))
        stats = llm.last_call_stats
        assert stats is not None
        return stats.candidates

    assert await asyncio.gather(one(5), one(25), one(41)) == [5, 25, 41]


def test_repairs_are_logged(server: FakeChatServer, caplog: pytest.LogCaptureFixture) -> None:
    server.fail_next(Fault("answer", content="[2] > [2]"))
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        ranking = backend(server).score("q", texts(3))
    assert sorted(ranking.ranks) == [1, 2, 3]
    assert "repaired 1 of 1 window answers" in caplog.text
    assert "identifier 2 repeated" in caplog.text


# -- the engine-level contract ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failure_falls_back_flagged_or_raises_when_strict(
    server: FakeChatServer, mode: str
) -> None:
    documents = texts(6)
    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    fallback = await call(reranker(server, max_retries=1), mode, "q", documents)
    assert fallback.report.status == "fallback"
    assert "BackendUnavailableError" in (fallback.report.error or "")
    assert [item.input_index for item in fallback.ranked] == list(range(6))
    server.fail_next(Fault("status", status=503), Fault("status", status=503))
    with pytest.raises(BackendUnavailableError, match="HTTP 503"):
        await call(reranker(server, strict=True, max_retries=1), mode, "q", documents)


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
    server: FakeChatServer, mode: str, faults: list[Fault]
) -> None:
    server.fail_next(*faults)
    documents = texts(5)
    result = await call(reranker(server, strict=True, timeout=0.4), mode, "topic 1", documents)
    assert [item.input_index for item in result.ranked] == hashed_order("topic 1", documents)
    assert len(server.requests) == len(faults) + 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_one_deadline_bounds_every_window_of_a_call(mode: str) -> None:
    with FakeChatServer(api_key=API_KEY) as own:  # latency of its own
        own.configure(latency=0.15)
        llm = backend(own, http={"deadline_s": 0.4})
        with pytest.raises(BackendUnavailableError, match=r"deadline_s=0\.4"):
            if mode == "sync":
                llm.score("q", texts(45))  # four windows, 0.15 s each
            else:
                await llm.ascore("q", texts(45))
        assert 2 <= len(own.requests) <= 3
        stats = llm.last_call_stats  # what the failed call spent before the deadline
        assert stats is not None and not stats.completed
        assert 1 <= stats.calls <= len(own.requests) and stats.prompt_tokens > 0
        await llm.aclose()


def test_a_wrong_key_is_final(server: FakeChatServer) -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        backend(server, api_key="sk-wrong").score("q", texts(3))
    assert caught.value.status_code == 401
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [("malformed", "not (valid )?JSON"), ("no_choices", "without a 'choices' list")],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_malformed_bodies_are_refused(
    server: FakeChatServer, mode: str, kind: str, message: str
) -> None:
    server.fail_next(Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(BackendResponseError, match=message):
        await call(reranker(server, strict=True), mode, "q", texts(5))
    server.fail_next(Fault(kind))  # type: ignore[arg-type]
    fallback = await call(reranker(server), mode, "q", texts(5))
    assert fallback.report.status == "fallback"
    assert [item.input_index for item in fallback.ranked] == list(range(5))


def test_the_key_is_never_shown(
    server: FakeChatServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: crossrank, httpx, httpcore
    ranker = reranker(server, max_retries=1)
    strict = reranker(server, strict=True, max_retries=0)
    seen = [repr(ranker), repr(ranker.backend), str(ranker.backend)]
    seen.append(json.dumps(ranker.backend.to_config()))  # type: ignore[attr-defined]
    seen.append(json.dumps(ranker.to_config()))
    server.fail_next(
        Fault("status", status=500, echo_authorization=True),
        Fault("status", status=500, echo_authorization=True),
    )
    fallback = ranker.rerank("q", texts(3))
    assert fallback.report.status == "fallback"
    seen.append(fallback.report.error or "")
    server.fail_next(Fault("status", status=401, echo_authorization=True))
    with pytest.raises(BackendUnavailableError) as raised:
        strict.rerank("q", texts(3))
    assert "Bearer ***" in str(raised.value)  # the echo was there, and was scrubbed
    seen += [str(raised.value), repr(raised.value), str(raised.value.args)]
    with pytest.raises(TypeError, match="literal API key"):
        import pickle

        pickle.dumps(ranker.backend)
    monkeypatch.setenv("CRK_LLM_KEY", API_KEY)
    from_env = LlmBackend(
        api_key=Secret.from_env_var("CRK_LLM_KEY"), base_url=server.base_url, http=FAST
    )
    seen.append(json.dumps(from_env.to_config()))
    captured = capsys.readouterr()
    seen += [caplog.text, captured.out, captured.err]
    seen += [record.getMessage() + repr(record.args) for record in caplog.records]
    assert all(API_KEY not in text for text in seen)


async def test_concurrent_calls_are_bounded() -> None:
    # A server of its own: a slow answer of an earlier test may still be in flight on the
    # shared one.
    with FakeChatServer(api_key=API_KEY) as own:
        own.configure(latency=0.02)
        llm = backend(own, http={"max_connections": 2})
        ranker = Reranker(llm, strict=True)
        results = await asyncio.gather(*(ranker.arerank(f"q{n}", texts(25)) for n in range(8)))
        assert all(result.report.status == "reranked" for result in results)
        assert len(own.requests) == 16
        assert own.max_in_flight == 2
        await ranker.aclose()


def test_engine_normalizes_ranks_and_keeps_everything_it_adds(server: FakeChatServer) -> None:
    documents = texts(12)
    result = reranker(server, strict=True, top_n=5).rerank("topic 4", documents)
    order = hashed_order("topic 4", documents)
    assert [item.input_index for item in result.ranked] == order[:5]
    # Raw scores are 1 - (rank - 1) / n; softmax of them sums to 1 over all 12.
    assert [item.raw_score for item in result.ranked] == [1.0 - r / 12 for r in range(5)]
    assert math.isclose(sum(item.score for item in result.ranked), sum(
        math.exp(1.0 - r / 12) for r in range(5)
    ) / sum(math.exp(1.0 - r / 12) for r in range(12)))


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("window", 1, "window must be at least 2"),
        ("step", 20, "step=20 with window=20"),
        ("passes", 0, "passes"),
        ("passage_tokens", -3, "-3"),
        ("llm_temperature", 3.5, "3.5"),
        ("llm_temperature", "hot", "hot"),
        ("stats_callback", 42, "stats_callback"),
        ("base_url", "ftp://x", "ftp://x"),
        ("http", {"timeout": 0}, "timeout"),
    ],
)
def test_bad_options_name_the_bad_value(option: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LlmBackend(**{option: value})


def test_registered_and_rebuilt_from_its_config(server: FakeChatServer) -> None:
    llm = create_backend("llm", **backend_options(server, window=8, step=3, passes=2))
    assert isinstance(llm, LlmBackend)
    config = llm.to_config()
    assert "api_key" not in config  # a literal key is never saved
    assert {k: config[k] for k in ("window", "step", "passes", "passage_tokens")} == {
        "window": 8,
        "step": 3,
        "passes": 2,
        "passage_tokens": 300,
    }
    rebuilt = LlmBackend(**config, api_key=API_KEY)
    assert rebuilt.score("q", texts(10)) == llm.score("q", texts(10))
    assert LlmBackend().endpoint == "https://api.openai.com/v1/chat/completions"
    assert "api_key=" in repr(llm) and API_KEY not in repr(llm)


def test_a_saved_reranker_config_rebuilds_it_without_the_key(server: FakeChatServer) -> None:
    ranker = Reranker(
        "llm",
        backend_options=backend_options(server, window=8, step=4),
        blend="rrf",
        top_n=3,
    )
    first = ranker.rerank("topic 5", texts(12))
    assert first.report.blend is not None and first.report.scores_from_ranks
    saved = json.loads(json.dumps(ranker.to_config()))
    assert API_KEY not in json.dumps(saved)
    again = Reranker.from_config(saved, api_key=API_KEY).rerank("topic 5", texts(12))
    assert again.texts == first.texts


def test_chat_answers_are_read_from_text_or_content_parts() -> None:
    from crossrank.backends.llm import chat_answer

    plain = {"choices": [{"message": {"content": "[2] > [1]"}}], "usage": {"prompt_tokens": 9}}
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "[2] > [1]"}]}}]}
    assert chat_answer(plain, "llm").content == chat_answer(parts, "llm").content == "[2] > [1]"
    assert chat_answer(plain, "llm").completion_tokens is None  # usage without it: unknown
    with pytest.raises(BackendResponseError, match="no 'message'"):
        chat_answer({"choices": [{"text": "[1]"}]}, "llm")
