"""The data model shared by the engine, the backends and the adapters.

Candidates and results are frozen so that nothing downstream can mutate what the caller
handed in; adapters map results back to their own objects through ``input_index``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RerankStatus = Literal["reranked", "skipped", "fallback", "empty"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One first-stage hit: the text the reranker reads plus what the caller wants kept.

    ``metadata`` is held by reference and never modified by crossrank.
    """

    text: str
    id: str | None = None
    first_stage_score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    """A kept candidate in its final position.

    ``raw_score`` is the reranker's output before normalization (after window aggregation
    and blending); it is ``None`` when the reranker did not run for this call.
    ``first_stage_rank`` and ``rank`` are 1-based; ``input_index`` is the 0-based position in
    the list the caller passed, which is how adapters find their original object again.
    """

    candidate: Candidate
    input_index: int
    first_stage_rank: int
    rank: int
    score: float
    raw_score: float | None

    @property
    def id(self) -> str | None:
        return self.candidate.id

    @property
    def text(self) -> str:
        return self.candidate.text


@dataclass(frozen=True, slots=True)
class DuplicateCandidate:
    """A candidate dropped as a duplicate of an earlier one (first occurrence wins)."""

    input_index: int
    kept_input_index: int
    key: str
    reason: Literal["id", "text"]


@dataclass(frozen=True, slots=True)
class SelectiveDecision:
    """Why the reranker did or did not run: which policy, what it read, and its verdict."""

    policy: str
    rerank: bool
    signal: float | None = None
    threshold: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RerankReport:
    """What the engine did for one call; attached to every result for observability."""

    status: RerankStatus
    backend: str
    model: str | None
    normalization: str
    pairs_scored: int = 0
    windows_scored: int = 0
    duplicates: tuple[DuplicateCandidate, ...] = ()
    selective: SelectiveDecision | None = None
    blend: str | None = None
    error: str | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    #: True when a listwise backend gave ranks, not scores: raw scores are then
    #: ``1 - (rank - 1) / n`` (see :func:`crossrank.backends.base.scores_from_ranks`).
    scores_from_ranks: bool = False
    #: What the latency budget did, when one applied (see :mod:`crossrank.budget`).
    budget: Any = None
    #: What the backend reports of this call's cost, for backends that keep such figures
    #: (the LLM reranker: calls, tokens, passes, repairs of malformed answers).
    backend_stats: Mapping[str, Any] | None = None

    @property
    def partial(self) -> bool:
        """Reranked, but only the head the latency budget allowed; the rest kept its place."""
        return self.budget is not None and self.budget.kept_in_first_stage_order > 0

    @property
    def reranked(self) -> bool:
        return self.status == "reranked"

    @property
    def fell_back(self) -> bool:
        return self.status == "fallback"

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"


@dataclass(frozen=True, slots=True)
class RerankResult(Sequence[RankedCandidate]):
    """The kept candidates in final order, plus the report of how they got there."""

    query: str
    ranked: tuple[RankedCandidate, ...]
    report: RerankReport

    def __len__(self) -> int:
        return len(self.ranked)

    def __iter__(self) -> Iterator[RankedCandidate]:
        return iter(self.ranked)

    def __getitem__(self, index: int) -> RankedCandidate:  # type: ignore[override]
        return self.ranked[index]

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.ranked]

    @property
    def ids(self) -> list[str | None]:
        return [item.id for item in self.ranked]

    @property
    def scores(self) -> list[float]:
        return [item.score for item in self.ranked]
