"""The one contract every scoring backend meets.

A backend turns (query, texts) into raw floats, one per text, in input order. It knows
nothing of candidates, ranks, deduplication or normalization: that is the engine's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Scores a query against texts. ``ascore`` must not block the event loop."""

    @property
    def name(self) -> str:
        """Short backend name recorded in every result (``"cross-encoder"``, ``"cohere"``...)."""
        ...

    @property
    def model_name(self) -> str | None:
        """The model id or path, for reports; ``None`` when not meaningful."""
        ...

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Raw relevance scores, ``len(texts)`` of them, in the order of ``texts``."""
        ...

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async twin of :meth:`score`."""
        ...


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a listwise reranker returns instead of scores: a 1-based rank per input text.

    ``ranks[i]`` is the rank of ``texts[i]`` (1 = best); the ranks are a permutation of
    ``1..len(texts)``. The engine turns ranks into raw scores with :func:`scores_from_ranks`,
    so windowing, blending and normalization work unchanged; results then carry the rank the
    backend gave in their report.
    """

    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.ranks) != list(range(1, len(self.ranks) + 1)):
            raise ValueError(f"ranks must be a permutation of 1..{len(self.ranks)}")

    def __len__(self) -> int:
        return len(self.ranks)


def scores_from_ranks(ranks: Sequence[int]) -> list[float]:
    """Raw scores for rank-only results: ``1 - (rank - 1) / n``, so the best is 1.0.

    Linear in the rank and bounded in (0, 1], which keeps softmax at temperature 1 gentle
    (a listwise order says which is better, not by how much) and lets max-aggregation of
    windows and score blending treat them like any other score.
    """
    count = len(ranks)
    return [1.0 - (rank - 1) / count for rank in ranks]


@runtime_checkable
class ReportsCallStats(Protocol):
    """Optional capability: what the last call cost (LLM calls, tokens...), JSON-ready.

    Read by the engine right after scoring, in the same thread or task, into
    ``RerankReport.backend_stats``.
    """

    def call_stats(self) -> Mapping[str, Any] | None: ...


@runtime_checkable
class TokenWindowing(Protocol):
    """Optional capability: lets the engine cut long texts into windows the model can read.

    ``token_spans`` gives the character span of each token of ``text`` (special tokens
    excluded); ``window_token_budget`` is how many text tokens fit beside ``query`` in one
    model input, or ``None`` when the backend has no limit.
    """

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def window_token_budget(self, query: str) -> int | None: ...


class BaseBackend:
    """Convenience base: a blocking ``score`` gets an ``ascore`` that runs it off the loop.

    Local models release the GIL inside torch, so a worker thread is genuinely concurrent
    with the event loop; remote backends override ``ascore`` with a real async client.
    """

    name: str = "backend"
    #: Constructor options that hold credentials. Whatever is given for them is wrapped in a
    #: :class:`crossrank.Secret`, so configs, reprs and logs know them by type, not by name.
    secret_options: ClassVar[tuple[str, ...]] = ()
    #: True for listwise backends that return :class:`Ranking`: the engine then never splits
    #: one query's texts across calls (ranks from different calls do not compare).
    returns_ranks: ClassVar[bool] = False

    @property
    def model_name(self) -> str | None:
        return None

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, list(texts))
