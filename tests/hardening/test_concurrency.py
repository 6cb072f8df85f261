"""Many threads and many coroutines sharing one loaded model get the sequential answers.

The tiny cross-encoder is a real transformer, so these runs exercise the real tokenizer and
torch under contention; every result is compared with the same call made sequentially.
Waits are bounded, so a deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crossrank import Candidate, ModelRegistry, Reranker, RerankResult

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from crossrank.backends.cross_encoder import CrossEncoderBackend

THREADS = 8
CALLS_PER_THREAD = 200
ASYNC_CALLS = 500
DEADLOCK_LIMIT_S = 240.0

QUERIES = [
    "refunds for digital downloads",
    "capital of germany",
    "reset my password",
    "shipping to europe",
    "warranty \u05d0 defects \U0001f44d",
]
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "the capital of germany is berlin and about 3.7 million people live there",
    "to reset your password open settings and choose security",
    "shipping to europe takes five to seven business days",
    "the warranty covers manufacturing defects for two years",
    "paris is the capital of france and sits on the seine",
]


def workload(call: int) -> tuple[str, list[Candidate]]:
    """Call ``call``'s query and candidates: varied sizes, deterministic."""
    query = QUERIES[call % len(QUERIES)]
    size = 2 + call % 5
    start = call % len(PASSAGES)
    texts = [PASSAGES[(start + offset) % len(PASSAGES)] for offset in range(size)]
    return query, [
        Candidate(text, id=f"p{(start + i) % len(PASSAGES)}") for i, text in enumerate(texts)
    ]


def fingerprint(result: RerankResult) -> tuple[object, ...]:
    return (
        result.report.status,
        tuple((item.id, item.score, item.raw_score) for item in result),
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Concurrency comes from our threads; torch's own pool would fight them for 2 cores.

    On a loaded machine torch's spinning intra-op threads make each tiny-model call ~40x
    slower; one intra-op thread keeps the 1,600 calls to seconds. Restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_reranker(tiny_cross_encoder_path: Path) -> Reranker:
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=ModelRegistry()
    )
    return Reranker(backend, strict=True)


@pytest.fixture(scope="module")
def sequential(shared_reranker: Reranker) -> dict[int, tuple[object, ...]]:
    """The answer of every distinct workload, computed one call at a time."""
    distinct = len(QUERIES) * len(PASSAGES) * 5
    return {call: fingerprint(shared_reranker.rerank(*workload(call))) for call in range(distinct)}


def expected(sequential: dict[int, tuple[object, ...]], call: int) -> tuple[object, ...]:
    return sequential[call % len(sequential)]


@pytest.mark.slow
def test_threads_sharing_one_model_get_sequential_results(
    shared_reranker: Reranker, sequential: dict[int, tuple[object, ...]]
) -> None:
    mismatches: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        start.wait(timeout=30)
        for step in range(CALLS_PER_THREAD):
            call = thread * CALLS_PER_THREAD + step
            try:
                result = shared_reranker.rerank(*workload(call))
            except BaseException as exc:  # collected and re-raised by the main thread
                errors.append(exc)
                return
            if fingerprint(result) != expected(sequential, call):
                mismatches.append(call)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLOCK_LIMIT_S)
    assert not any(thread.is_alive() for thread in threads), "a worker deadlocked"
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} calls differ from the sequential run"


@pytest.mark.slow
async def test_five_hundred_concurrent_async_calls_get_sequential_results(
    shared_reranker: Reranker, sequential: dict[int, tuple[object, ...]]
) -> None:
    async def one(call: int) -> tuple[object, ...]:
        return fingerprint(await shared_reranker.arerank(*workload(call)))

    results = await asyncio.wait_for(
        asyncio.gather(*(one(call) for call in range(ASYNC_CALLS))), DEADLOCK_LIMIT_S
    )
    assert [index for index, got in enumerate(results) if got != expected(sequential, index)] == []


def test_first_use_by_many_threads_loads_the_model_once(tiny_cross_encoder_path: Path) -> None:
    registry = ModelRegistry()
    # Separate backend objects, as separate adapters would build them, sharing one registry.
    backends = [
        CrossEncoderBackend(str(tiny_cross_encoder_path), device="cpu", registry=registry)
        for _ in range(THREADS)
    ]
    start = threading.Barrier(THREADS)

    def first_call(backend: CrossEncoderBackend) -> tuple[object, ...]:
        start.wait(timeout=30)
        return fingerprint(Reranker(backend, strict=True).rerank(*workload(3)))

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(first_call, backends, timeout=DEADLOCK_LIMIT_S))
    assert registry.load_count == 1
    assert len(registry) == 1
    assert len({id(backend.load()) for backend in backends}) == 1
    assert len(set(results)) == 1


async def test_first_use_by_many_coroutines_loads_the_model_once(
    tiny_cross_encoder_path: Path,
) -> None:
    registry = ModelRegistry()
    rerankers = [
        Reranker(
            CrossEncoderBackend(str(tiny_cross_encoder_path), device="cpu", registry=registry),
            strict=True,
        )
        for _ in range(THREADS)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(reranker.arerank(*workload(5)) for reranker in rerankers)),
        DEADLOCK_LIMIT_S,
    )
    assert registry.load_count == 1
    assert len({fingerprint(result) for result in results}) == 1


def test_a_failed_concurrent_first_load_is_retried_by_the_next_call(tmp_path: Path) -> None:
    """Threads racing on a model that is not there yet all fall back; none caches the failure."""
    from tests.support.tiny_models import build_tiny_cross_encoder

    path = tmp_path / "arrives-later"
    registry = ModelRegistry()
    backends = [
        CrossEncoderBackend(str(path), device="cpu", registry=registry, local_files_only=True)
        for _ in range(4)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        early = list(pool.map(lambda b: Reranker(b).rerank(*workload(1)), backends, timeout=60))
    assert all(result.report.status == "fallback" for result in early)
    assert registry.load_count == 0
    build_tiny_cross_encoder(path)
    later = Reranker(backends[0]).rerank(*workload(1))
    assert later.report.status == "reranked"
    assert registry.load_count == 1
