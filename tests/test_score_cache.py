"""The score cache (identical scores, bounded size) and the micro-batching scheduler, as the
local backend's convenience options use them (the wrappers alone: ``test_wrappers.py``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.micro_batch import MicroBatcher
from crossrank.backends.score_cache import ScoreCache
from crossrank.backends.wrappers import CachedBackend
from crossrank.errors import ConfigurationError
from tests.support.cpu import needs_native_bf16

QUERY = "refunds for digital downloads"
PASSAGES = [
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "paris is the capital of france",
    "the warranty covers manufacturing defects for two years",
]


def test_cache_returns_identical_scores_and_skips_the_model(
    tiny_cross_encoder_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), score_cache_size=100, registry=ModelRegistry()
    )
    first = backend.score(QUERY, PASSAGES)
    calls: list[int] = []
    original = backend.score_pairs

    def counting(queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        calls.append(len(texts))
        return original(queries, texts)

    monkeypatch.setattr(backend, "score_pairs", counting)
    assert backend.score(QUERY, PASSAGES) == first
    assert calls == []
    mixed = backend.score(QUERY, [PASSAGES[2], "a brand new passage", PASSAGES[0]])
    assert calls == [1]  # only the unseen text reached the model
    assert mixed[0] == first[2] and mixed[2] == first[0]
    assert backend.score_cache is not None and backend.score_cache.hits == 6


@needs_native_bf16
def test_cache_separates_queries_and_precisions(tiny_cross_encoder_path: Path) -> None:
    shared = ScoreCache(100)
    registry = ModelRegistry()
    fp32 = CachedBackend(
        CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry), cache=shared
    )
    bf16 = CachedBackend(
        CrossEncoderBackend(str(tiny_cross_encoder_path), precision="bf16", registry=registry),
        cache=shared,
    )
    a = fp32.score(QUERY, PASSAGES)
    b = fp32.score("capital of france", PASSAGES)
    assert a != b
    bf16.score(QUERY, PASSAGES)
    assert len(shared) == 3 * len(PASSAGES)


def test_cache_respects_its_size_bound_lru() -> None:
    cache = ScoreCache(3)
    _, keys = cache.lookup("m", "q", ["a", "b", "c"])
    cache.store(keys, [1.0, 2.0, 3.0])
    assert cache.lookup("m", "q", ["a"])[0] == [1.0]  # refreshes "a"
    _, new_keys = cache.lookup("m", "q", ["d"])
    cache.store(new_keys, [4.0])
    assert len(cache) == 3
    found, _ = cache.lookup("m", "q", ["a", "b", "c", "d"])
    assert found == [1.0, None, 3.0, 4.0]  # "b" was least recently used


def test_cache_holds_no_caller_text() -> None:
    cache = ScoreCache(10)
    _, keys = cache.lookup("m", "secret query", ["secret passage"])
    cache.store(keys, [0.5])
    assert "secret" not in repr(cache.entries)


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_bad_cache_size(size: object) -> None:
    with pytest.raises(ConfigurationError, match="cache size"):
        ScoreCache(size)  # type: ignore[arg-type]


def test_backend_cache_is_off_by_default(tiny_cross_encoder_path: Path) -> None:
    assert CrossEncoderBackend(str(tiny_cross_encoder_path)).score_cache is None


def test_micro_batcher_coalesces_concurrent_requests() -> None:
    groups: list[list[str]] = []
    gate = threading.Event()

    def score_pairs(queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        gate.wait(5)
        groups.append(list(queries))
        return [float(len(q) * 100 + len(t)) for q, t in zip(queries, texts, strict=True)]

    batcher = MicroBatcher(score_pairs, max_wait_s=0.5, max_pairs=1000)
    futures = [batcher.submit("q" * (i + 1), ["x" * j for j in range(i + 1)]) for i in range(5)]
    gate.set()
    results = [future.result(timeout=10) for future in futures]
    batcher.close()
    for i, result in enumerate(results):
        assert result == [float((i + 1) * 100 + j) for j in range(i + 1)]
    assert batcher.requests_served == 5
    assert batcher.groups_run < 5  # at least some requests shared a forward pass


def test_micro_batcher_error_fails_only_its_group() -> None:
    def score_pairs(queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [1.0] * len(texts)

    batcher = MicroBatcher(score_pairs, max_wait_s=0.0)
    bad = batcher.submit("q", ["boom"])
    with pytest.raises(RuntimeError, match="model failed"):
        bad.result(timeout=10)
    assert batcher.submit("q", ["fine"]).result(timeout=10) == [1.0]
    batcher.close()


def test_micro_batched_backend_matches_direct_scoring(tiny_cross_encoder_path: Path) -> None:
    registry = ModelRegistry()
    direct = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry)
    batched = CrossEncoderBackend(
        str(tiny_cross_encoder_path), micro_batch=True, micro_batch_wait_s=0.05, registry=registry
    )
    queries = [QUERY, "capital of france", "warranty length", "shipping time"]
    expected = {q: direct.score(q, PASSAGES) for q in queries}

    async def run_all() -> list[list[float]]:
        return await asyncio.gather(*(batched.ascore(q, PASSAGES) for q in queries))

    results = asyncio.run(run_all())
    for query, result in zip(queries, results, strict=True):
        assert np.allclose(result, expected[query], atol=1e-5)
    threaded: dict[str, list[float]] = {}

    def call(query: str) -> None:
        threaded[query] = batched.score(query, PASSAGES)

    threads = [threading.Thread(target=call, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for query in queries:
        assert np.allclose(threaded[query], expected[query], atol=1e-5)
    batcher = batched.micro_batcher
    assert batcher is not None and batcher.groups_run < 2 * len(queries)
    batched.close()


def test_backend_with_conveniences_pickles_after_use(tiny_cross_encoder_path: Path) -> None:
    import pickle

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        score_cache_size=10,
        micro_batch=True,
        registry=ModelRegistry(),
    )
    expected = backend.score(QUERY, PASSAGES)  # the worker thread and cache now exist
    restored = pickle.loads(pickle.dumps(backend))
    assert restored.score(QUERY, PASSAGES) == expected
    assert restored.score_cache is not None and restored.micro_batcher is not None
    restored.close()
    backend.close()
