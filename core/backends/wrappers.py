"""Caching and micro-batching as wrappers around any backend.

Both are decisions about *when* to call a scorer, not about scoring, so they live outside
every backend and compose: ``CachedBackend(MicroBatchedBackend(backend))`` answers repeats
from memory and merges the rest with concurrent requests into shared forward passes. A
wrapper is itself a backend (name, model name, ``score``, ``ascore``) and keeps the windowing
capability when the wrapped backend has it, so the engine treats it like the original.

- :class:`CachedBackend`: an LRU of scores (:class:`~crossrank.backends.score_cache.ScoreCache`)
  keyed by digests, never by caller text; ``max_entries=None`` keeps everything, as an
  evaluation that replays many configurations over the same candidates wants. It records
  what each score cost, so ``last_replayed_ms`` says what a call's hits would have cost.
- :class:`MicroBatchedBackend`: one worker thread merges requests that arrive within
  ``max_wait_s`` (:class:`~crossrank.backends.micro_batch.MicroBatcher`); a backend with
  ``score_pairs`` (the local cross-encoder) scores pairs of different queries in one pass,
  any other is called once per distinct query of the group.

Both pickle and deep-copy: the cache's entries travel, locks and worker threads are new.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from typing import Any

from crossrank.backends.base import Backend, BaseBackend, TokenWindowing
from crossrank.backends.micro_batch import MicroBatcher
from crossrank.backends.score_cache import Key, ScoreCache


class _Wrapper(BaseBackend):
    """Forwards a backend's identity; subclasses decide when ``inner`` scores."""

    inner: Any

    def __new__(cls, inner: Any, *args: Any, **kwargs: Any) -> Any:
        # A wrapper of a windowing backend must window too: pick the subclass that says so.
        windowed = _WINDOWED.get(cls)
        if windowed is not None and isinstance(inner, TokenWindowing):
            cls = windowed
        return super().__new__(cls)

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self.inner,)

    @property  # the wrapped backend's name, so results and logs name the real scorer
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name  # type: ignore[no-any-return]

    @property
    def model_name(self) -> str | None:
        return self.inner.model_name  # type: ignore[no-any-return]

    def load(self) -> Any:
        """Load the wrapped backend now, if it loads lazily."""
        loader = getattr(self.inner, "load", None)
        return loader() if loader is not None else None

    def cache_identity(self) -> Hashable:
        return scorer_identity(self.inner)

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()


def scorer_identity(backend: Any) -> Hashable:
    """What makes two backends' scores interchangeable: their own ``cache_identity()`` when
    they have one (the local backend adds its variant), else class, name and model."""
    own = getattr(backend, "cache_identity", None)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    return (type(backend).__qualname__, backend.name, backend.model_name)


class CachedBackend(_Wrapper):
    """Answers repeated (query, text) pairs from an LRU; only misses reach ``inner``."""

    def __init__(
        self, inner: Backend, *, max_entries: int | None = 10_000, cache: ScoreCache | None = None
    ) -> None:
        """``cache`` shares one store between wrappers (keys include each scorer's identity)."""
        self.inner = inner
        self.cache = cache if cache is not None else ScoreCache(max_entries)
        #: Pairs sent to ``inner`` so far, and what the last call's hits originally cost (ms).
        self.pairs_computed = 0
        self.last_replayed_ms = 0.0

    @property
    def _scores(self) -> Any:
        """The entries (``benchmarks/eval_collections.py`` saves and restores them)."""
        return self.cache.entries

    def _plan(self, query: str, texts: Sequence[str]) -> tuple[list[Key], dict[Key, float]]:
        """Every text's key, the cached scores found, and what the hits once cost."""
        keys = self.cache.keys(self.cache_identity(), query, texts)
        known: dict[Key, float] = {}
        replayed = 0.0
        for key, entry in zip(keys, self.cache.get(keys), strict=True):
            if entry is not None:
                known[key] = entry[0]
                replayed += entry[1]
        self.last_replayed_ms = replayed
        return keys, known

    def _missing(
        self, keys: list[Key], texts: Sequence[str], known: dict[Key, float]
    ) -> dict[Key, str]:
        return {key: text for key, text in zip(keys, texts, strict=True) if key not in known}

    def _finish(
        self,
        keys: list[Key],
        known: dict[Key, float],
        missing: dict[Key, str],
        fresh: Sequence[float],
        spent_s: float,
    ) -> list[float]:
        if missing:
            self.pairs_computed += len(missing)
            self.cache.store(list(missing), fresh, spent_s * 1000.0 / len(missing))
            known.update(zip(missing, (float(value) for value in fresh), strict=True))
        return [known[key] for key in keys]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        keys, known = self._plan(query, texts)
        missing = self._missing(keys, texts, known)
        started = time.perf_counter()
        fresh = self.inner.score(query, list(missing.values())) if missing else []
        return self._finish(keys, known, missing, fresh, time.perf_counter() - started)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        keys, known = self._plan(query, texts)
        missing = self._missing(keys, texts, known)
        started = time.perf_counter()
        fresh = await self.inner.ascore(query, list(missing.values())) if missing else []
        return self._finish(keys, known, missing, fresh, time.perf_counter() - started)


class MicroBatchedBackend(_Wrapper):
    """Merges concurrent requests into shared scoring calls on one worker thread."""

    def __init__(
        self, inner: Backend, *, max_wait_s: float = 0.005, max_pairs: int = 256
    ) -> None:
        self.inner = inner
        self.max_wait_s = max_wait_s
        self.max_pairs = max_pairs
        MicroBatcher(self._score_pairs, max_wait_s=max_wait_s, max_pairs=max_pairs)  # validates
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._batcher: MicroBatcher | None = None
        self._lock = threading.Lock()
        self._loaded = False

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "max_wait_s": self.max_wait_s, "max_pairs": self.max_pairs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def batcher(self) -> MicroBatcher:
        if self._batcher is None:
            with self._lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(
                        self._score_pairs, max_wait_s=self.max_wait_s, max_pairs=self.max_pairs
                    )
        return self._batcher

    def _score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        pairs = getattr(self.inner, "score_pairs", None)
        if pairs is not None:
            return pairs(queries, texts)  # type: ignore[no-any-return]
        scores: list[float] = [0.0] * len(texts)
        by_query: dict[str, list[int]] = {}
        for index, query in enumerate(queries):
            by_query.setdefault(query, []).append(index)
        for query, indexes in by_query.items():
            fresh = self.inner.score(query, [texts[i] for i in indexes])
            for index, value in zip(indexes, fresh, strict=True):
                scores[index] = float(value)
        return scores

    def _submit(self, query: str, texts: Sequence[str]) -> Future[list[float]]:
        return self.batcher.submit(query, texts)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return self._submit(query, texts).result()

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if not self._loaded:  # a lazy model loads off the event loop, once
            await asyncio.to_thread(self.load)
            self._loaded = True
        return await asyncio.wrap_future(self._submit(query, texts))

    def close(self) -> None:
        """Stop the worker after the requests already queued (a later call starts a new one)."""
        with self._lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        super().close()


class _WindowingMixin:
    """The windowing capability, forwarded to a wrapped backend that has it."""

    inner: Any

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)  # type: ignore[no-any-return]

    def window_token_budget(self, query: str) -> int | None:
        return self.inner.window_token_budget(query)  # type: ignore[no-any-return]


class WindowedCachedBackend(_WindowingMixin, CachedBackend):
    """:class:`CachedBackend` around a backend that windows long texts."""


class WindowedMicroBatchedBackend(_WindowingMixin, MicroBatchedBackend):
    """:class:`MicroBatchedBackend` around a backend that windows long texts."""


_WINDOWED: dict[type, type] = {
    CachedBackend: WindowedCachedBackend,
    MicroBatchedBackend: WindowedMicroBatchedBackend,
}


class _DirectScorer:
    """The local backend's own scoring, for its convenience wrappers to call."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    name = property(lambda self: self.backend.name)
    model_name = property(lambda self: self.backend.model_name)

    def load(self) -> Any:
        return self.backend.load()

    def cache_identity(self) -> Hashable:
        return self.backend.cache_identity()  # type: ignore[no-any-return]

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        return self.backend.score_pairs(queries, texts)  # type: ignore[no-any-return]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(texts), texts)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, list(texts))


def scoring_front(
    backend: Any,
    *,
    score_cache_size: int,
    micro_batch: bool,
    micro_batch_wait_s: float,
    max_pairs: int,
) -> CachedBackend | MicroBatchedBackend | None:
    """The wrappers a backend's convenience options ask for, around its own scoring."""
    front: Any = _DirectScorer(backend)
    if micro_batch:
        front = MicroBatchedBackend(front, max_wait_s=micro_batch_wait_s, max_pairs=max_pairs)
    if score_cache_size:
        front = CachedBackend(front, max_entries=score_cache_size)
    return front if front.__class__ is not _DirectScorer else None


def find_micro_batcher(front: Any) -> MicroBatcher | None:
    """The running batcher anywhere in a chain of wrappers, if one started."""
    while front is not None:
        if isinstance(front, MicroBatchedBackend):
            return front._batcher
        front = getattr(front, "inner", None)
    return None


__all__ = [
    "CachedBackend",
    "MicroBatchedBackend",
    "WindowedCachedBackend",
    "WindowedMicroBatchedBackend",
    "scorer_identity",
]
