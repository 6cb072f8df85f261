"""Caching and micro-batching wrap any backend: identical scores, fewer calls, windowing kept."""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
from pathlib import Path

import pytest

from crossrank import ModelRegistry, Reranker
from crossrank.backends.base import TokenWindowing
from crossrank.backends.score_cache import ScoreCache
from crossrank.backends.wrappers import (
    CachedBackend,
    MicroBatchedBackend,
    WindowedCachedBackend,
    scorer_identity,
)
from crossrank.errors import ConfigurationError
from crossrank.eval.runner import caching
from tests.support.backends import CharWindowBackend, KeywordBackend

QUERY = "refunds for digital downloads"
TEXTS = [
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "refunds for physical goods are issued within fourteen days",
]


def test_cached_backend_scores_each_pair_once() -> None:
    inner = KeywordBackend()
    cached = CachedBackend(inner, max_entries=100)
    first = cached.score(QUERY, TEXTS)
    assert first == inner.score(QUERY, TEXTS)
    inner.calls.clear()
    assert cached.score(QUERY, [TEXTS[2], "a new text", TEXTS[0], "a new text"]) == [
        first[2],
        inner.score(QUERY, ["a new text"])[0],
        first[0],
        inner.score(QUERY, ["a new text"])[0],
    ]
    assert inner.calls[0] == (QUERY, ["a new text"]), "only the unseen text, once"
    assert cached.pairs_computed == len(TEXTS) + 1
    assert cached.cache.hits == 2


def test_cached_backend_keeps_identity_and_windowing() -> None:
    plain = CachedBackend(KeywordBackend())
    windowed = CachedBackend(CharWindowBackend(budget=4))
    assert (plain.name, plain.model_name) == ("keyword", "keyword-overlap")
    assert not isinstance(plain, TokenWindowing)
    assert isinstance(windowed, WindowedCachedBackend) and isinstance(windowed, TokenWindowing)
    long_text = "refunds " + "filler words " * 20 + "digital downloads"
    result = Reranker(windowed).rerank(QUERY, [long_text, TEXTS[1]])
    assert result.report.windows_scored > 2


async def test_cached_backend_async_path_uses_the_cache() -> None:
    inner = KeywordBackend()
    cached = CachedBackend(inner)
    first = await cached.ascore(QUERY, TEXTS)
    again = await cached.ascore(QUERY, TEXTS)
    assert first == again and len(inner.calls) == 1


def test_shared_cache_separates_scorers() -> None:
    shared = ScoreCache(100)
    keyword = CachedBackend(KeywordBackend(), cache=shared)
    windowed = CachedBackend(CharWindowBackend(budget=8), cache=shared)
    keyword.score(QUERY, TEXTS)
    windowed.score(QUERY, TEXTS)
    assert len(shared) == 2 * len(TEXTS)
    assert scorer_identity(KeywordBackend()) != scorer_identity(CharWindowBackend(budget=8))


def test_replayed_cost_is_what_the_hits_once_took() -> None:
    """The evaluation runner charges a configuration what its cached scores originally cost."""
    cached = caching(KeywordBackend())
    assert cached.cache.max_entries is None, "an evaluation keeps every score"
    assert caching(cached) is cached
    cached.score(QUERY, TEXTS)
    assert cached.last_replayed_ms == 0.0
    cached.score(QUERY, TEXTS)
    stored = sum(entry[1] for entry in cached._scores.values())
    assert cached.last_replayed_ms == pytest.approx(stored)


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_bad_cache_size(size: object) -> None:
    with pytest.raises(ConfigurationError, match="cache size"):
        CachedBackend(KeywordBackend(), max_entries=size)  # type: ignore[arg-type]


def test_micro_batched_backend_merges_requests_of_any_backend() -> None:
    inner = KeywordBackend()
    batched = MicroBatchedBackend(inner, max_wait_s=0.2)
    queries = [QUERY, "shipping to europe", QUERY, "fourteen days"]
    results: dict[int, list[float]] = {}
    barrier = threading.Barrier(len(queries))

    def call(index: int) -> None:
        barrier.wait()
        results[index] = batched.score(queries[index], TEXTS)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, query in enumerate(queries):
        assert results[index] == KeywordBackend().score(query, TEXTS)
    # One call per distinct query of each merged group: fewer than one per request.
    assert batched.batcher.groups_run < len(queries)
    batched.close()


async def test_micro_batched_backend_async() -> None:
    batched = MicroBatchedBackend(KeywordBackend(), max_wait_s=0.05)
    results = await asyncio.gather(*(batched.ascore(q, TEXTS) for q in (QUERY, "europe")))
    assert results == [KeywordBackend().score(q, TEXTS) for q in (QUERY, "europe")]
    batched.close()


class PicklableCharWindowBackend(CharWindowBackend):
    """The support backend's call log lock, made anew on unpickling."""

    def __getstate__(self) -> dict[str, object]:
        return {"calls": self.calls, "budget": self.budget}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def test_wrappers_compose_pickle_and_deepcopy() -> None:
    inner = PicklableCharWindowBackend(budget=6)
    stacked = CachedBackend(MicroBatchedBackend(inner), max_entries=50)
    expected = stacked.score(QUERY, TEXTS)
    assert isinstance(stacked, TokenWindowing)
    for restored in (pickle.loads(pickle.dumps(stacked)), copy.deepcopy(stacked)):
        assert type(restored) is type(stacked)
        assert restored.score(QUERY, TEXTS) == expected
        assert len(restored.cache) == len(TEXTS), "the cached scores travel"
        restored.close()
    stacked.close()


def test_local_backend_in_wrappers(tiny_cross_encoder_path: Path) -> None:
    pytest.importorskip("torch")
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    backend = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry())
    expected = backend.score(QUERY, TEXTS)
    wrapped = CachedBackend(MicroBatchedBackend(backend))
    assert isinstance(wrapped, TokenWindowing)
    assert wrapped.score(QUERY, TEXTS) == pytest.approx(expected, abs=1e-5)
    assert scorer_identity(backend)[2] == "torch-fp32", "the variant is part of the identity"
    restored = pickle.loads(pickle.dumps(wrapped))
    assert restored.score(QUERY, TEXTS) == pytest.approx(expected, abs=1e-5)
    restored.close()
    wrapped.close()
