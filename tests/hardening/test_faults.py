"""Faults: broken model files, a failing tokenizer, backends that raise or hang mid-call,
and a broken ONNX export cache. Each gives a clear error (strict) or a flagged first-stage
fallback, and the next call, once the cause is gone, works.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from crossrank import (
    BackendError,
    BaseBackend,
    Candidate,
    CrossrankError,
    ModelLoadError,
    ModelRegistry,
    Reranker,
)
from tests.support.backends import KeywordBackend

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from crossrank.backends.cross_encoder import CrossEncoderBackend

QUERY = "refunds for digital downloads"
CANDIDATES = [
    Candidate("refunds for physical goods are issued within fourteen days", id="physical"),
    Candidate("refunds for digital downloads are only possible before opening", id="digital"),
    Candidate("shipping to europe takes five to seven business days", id="shipping"),
    Candidate("the warranty covers manufacturing defects for two years", id="warranty"),
    Candidate("paris is the capital of france", id="paris"),
]
FIRST_STAGE_ORDER = [candidate.id for candidate in CANDIDATES]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def local_backend(path: Path, **options: Any) -> CrossEncoderBackend:
    return CrossEncoderBackend(
        str(path), device="cpu", registry=ModelRegistry(), local_files_only=True, **options
    )


def healthy_ids(tiny_cross_encoder_path: Path) -> list[str | None]:
    return (
        Reranker(local_backend(tiny_cross_encoder_path), strict=True).rerank(QUERY, CANDIDATES).ids
    )


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- model files ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt-weights", "garbage-tokenizer"])
def test_broken_model_files_fall_back_then_recover(
    tmp_path: Path, tiny_cross_encoder_path: Path, kind: str
) -> None:
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "corrupt-weights":
        copy_model(tiny_cross_encoder_path, path)
        (path / "model.safetensors").write_bytes(b"\x00" * 64 + b"not a safetensors file")
    elif kind == "garbage-tokenizer":
        copy_model(tiny_cross_encoder_path, path)
        (path / "tokenizer.json").write_text('{"version": "1.0", "model": garbage', "utf-8")
    backend = local_backend(path)

    # Strict: one clear error that names the model path.
    with pytest.raises(ModelLoadError, match=str(path).replace("\\", "\\\\")):
        Reranker(backend, strict=True).rerank(QUERY, CANDIDATES)
    # Default: first-stage order, flagged, with the reason.
    fallback = Reranker(backend).rerank(QUERY, CANDIDATES)
    assert fallback.report.status == "fallback"
    assert fallback.ids == FIRST_STAGE_ORDER
    assert "could not load" in (fallback.report.error or "")

    # The cause goes away; the same backend object recovers on the next call.
    if path.exists():
        shutil.rmtree(path)
    copy_model(tiny_cross_encoder_path, path)
    recovered = Reranker(backend).rerank(QUERY, CANDIDATES)
    assert recovered.report.status == "reranked"
    assert recovered.ids == healthy_ids(tiny_cross_encoder_path)


# -- a backend that fails part-way through a call ---------------------------------------------


class FlakyChunkedBackend(BaseBackend):
    """Scores with the real tiny model in chunks of two; chunk ``fail_at`` raises once."""

    name = "flaky-chunks"

    def __init__(self, inner: CrossEncoderBackend, *, fail_at: int) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.failures_left = 1

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for chunk, start in enumerate(range(0, len(texts), 2)):
            if chunk == self.fail_at and self.failures_left:
                self.failures_left -= 1
                raise RuntimeError(f"device lost in chunk {chunk}")
            scores.extend(self.inner.score(query, list(texts[start : start + 2])))
        return scores


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_backend_failing_mid_batch_falls_back_and_the_next_call_works(
    tiny_cross_encoder_path: Path, mode: str
) -> None:
    backend = FlakyChunkedBackend(local_backend(tiny_cross_encoder_path), fail_at=1)
    reranker = Reranker(backend)

    def call() -> Any:
        if mode == "sync":
            return reranker.rerank(QUERY, CANDIDATES)
        return asyncio.run(reranker.arerank(QUERY, CANDIDATES))

    failed = call()
    assert failed.report.status == "fallback"
    assert failed.ids == FIRST_STAGE_ORDER  # partial scores were not used
    assert "device lost in chunk 1" in (failed.report.error or "")
    recovered = call()
    assert recovered.report.status == "reranked"
    assert recovered.ids == healthy_ids(tiny_cross_encoder_path)


def test_strict_mid_batch_failure_is_a_backend_error_with_its_cause(
    tiny_cross_encoder_path: Path,
) -> None:
    backend = FlakyChunkedBackend(local_backend(tiny_cross_encoder_path), fail_at=2)
    with pytest.raises(BackendError, match="device lost in chunk 2") as raised:
        Reranker(backend, strict=True).rerank(QUERY, CANDIDATES)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert Reranker(backend, strict=True).rerank(QUERY, CANDIDATES).report.status == "reranked"


# -- a backend that hangs ---------------------------------------------------------------------


class HangingAsyncBackend(KeywordBackend):
    """``ascore`` waits on an event that only the test sets: a stuck network call."""

    name = "hanging-async"

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.cancelled = 0

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return self.score(query, texts)


class HangingThreadBackend(KeywordBackend):
    """A blocking ``score`` stuck on a lock (the default ``ascore`` runs it in a thread)."""

    name = "hanging-thread"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.stuck_calls = 0

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if self.stuck_calls == 0:
            self.stuck_calls += 1
            self.release.wait(timeout=60)
        return super().score(query, texts)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await BaseBackend.ascore(self, query, texts)


async def test_a_hanging_async_backend_is_cancelled_by_the_caller_and_recovers() -> None:
    backend = HangingAsyncBackend()
    reranker = Reranker(backend)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=0.2)
    assert backend.cancelled == 1  # cancellation reached the backend; nothing swallowed it
    backend.hang = False
    result = await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=10)
    assert result.report.status == "reranked"
    assert result.ids == Reranker(KeywordBackend()).rerank(QUERY, CANDIDATES).ids


async def test_a_hanging_thread_does_not_block_the_next_call() -> None:
    backend = HangingThreadBackend()
    reranker = Reranker(backend)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=0.2)
        # The stuck worker thread still holds its call; the loop and the next call do not wait.
        result = await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=10)
        assert result.report.status == "reranked"
    finally:
        backend.release.set()


async def test_a_hanging_api_is_cancelled_by_the_caller_and_recovers() -> None:
    from crossrank.backends.jina import JinaBackend
    from tests.support.fake_rerank_server import FakeRerankServer, Fault

    with FakeRerankServer(api_key="crk-hang-test") as server:
        backend = JinaBackend(
            **server.client_options("jina"), http={"timeout": 30.0, "max_retries": 0}
        )
        reranker = Reranker(backend)
        server.fail_next(Fault("slow", delay=3.0))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=0.3)
        result = await asyncio.wait_for(reranker.arerank(QUERY, CANDIDATES), timeout=10)
        assert result.report.status == "reranked"
        assert sorted(result.ids) == sorted(FIRST_STAGE_ORDER)  # type: ignore[type-var]
        await backend.aclose()


# -- the ONNX export cache --------------------------------------------------------------------


def onnx_backend(path: Path, cache_dir: Path) -> CrossEncoderBackend:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("crossrank.backends.onnx_export", reason="ONNX variants not there yet")
    try:
        return local_backend(path, runtime="onnx", cache_dir=str(cache_dir))
    except TypeError as exc:  # the backend predates runtime=/cache_dir=
        pytest.skip(f"CrossEncoderBackend has no ONNX options: {exc}")


@pytest.mark.slow
def test_corrupted_onnx_cache_entries_are_rebuilt(
    tmp_path: Path, tiny_cross_encoder_path: Path
) -> None:
    cache = tmp_path / "cache"
    reference = Reranker(onnx_backend(tiny_cross_encoder_path, cache), strict=True).rerank(
        QUERY, CANDIDATES
    )
    assert reference.ids == healthy_ids(tiny_cross_encoder_path)
    models = list(cache.rglob("*.onnx"))
    assert models, "no ONNX file was cached"
    for damage in ("weights", "manifest"):
        if damage == "weights":
            for model in models:
                model.write_bytes(b"\x08\x01garbage")
        else:
            for manifest in cache.rglob("*.json"):
                manifest.write_text("{not json", "utf-8")
        rebuilt = Reranker(onnx_backend(tiny_cross_encoder_path, cache), strict=True).rerank(
            QUERY, CANDIDATES
        )
        assert rebuilt.ids == reference.ids
        assert rebuilt.scores == pytest.approx(reference.scores, abs=1e-6)


def test_an_unwritable_onnx_cache_falls_back_and_the_next_call_works(
    tmp_path: Path, tiny_cross_encoder_path: Path
) -> None:
    # Tests may run as root, where permissions do not stop writes: put the cache under a file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x", "utf-8")
    backend = onnx_backend(tiny_cross_encoder_path, blocker / "cache")
    fallback = Reranker(backend).rerank(QUERY, CANDIDATES)
    assert fallback.report.status == "fallback"
    assert fallback.ids == FIRST_STAGE_ORDER
    assert "not-a-directory" in (fallback.report.error or "")
    blocker.unlink()  # the cache becomes usable: the same backend exports and reranks
    recovered = Reranker(backend).rerank(QUERY, CANDIDATES)
    assert recovered.report.status == "reranked"
    assert recovered.ids == healthy_ids(tiny_cross_encoder_path)


def test_an_unwritable_onnx_cache_is_a_crossrank_error_in_strict_mode(
    tmp_path: Path, tiny_cross_encoder_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x", "utf-8")
    backend = onnx_backend(tiny_cross_encoder_path, blocker / "cache")
    with pytest.raises(CrossrankError, match="not-a-directory"):
        backend.load()
