"""Blending the first-stage ranking back into the reranker's.

A reranker trained on another domain can be worse than BM25; fusing both rankings keeps
most of the reranker's gain where it helps and caps the damage where it hurts. A blend runs
after scoring and before normalization, and its output replaces the raw reranker scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from crossrank.errors import InvalidInputError
from crossrank.normalize import MinMax


@runtime_checkable
class Blend(Protocol):
    """Combines first-stage evidence with reranker scores into one score per candidate."""

    @property
    def name(self) -> str: ...

    def combine(
        self,
        first_stage_ranks: Sequence[int],
        first_stage_scores: Sequence[float | None],
        reranker_scores: Sequence[float],
    ) -> list[float]: ...


def _ranks_by_score(scores: Sequence[float]) -> list[int]:
    """1-based ranks, best score first; ties keep input order (stable)."""
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    ranks = [0] * len(scores)
    for position, index in enumerate(order, start=1):
        ranks[index] = position
    return ranks


class ReciprocalRankBlend:
    """Reciprocal rank fusion of the first-stage rank and the reranker rank.

    score = w / (k + reranker_rank) + (1 - w) / (k + first_stage_rank); with the default
    weight 0.5 this is plain RRF (up to a constant factor).
    """

    def __init__(self, *, k: int = 60, reranker_weight: float = 0.5) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidInputError(f"RRF k must be a non-negative integer, got {k!r}")
        _check_weight(reranker_weight)
        self.k = k
        self.reranker_weight = float(reranker_weight)

    @property
    def spec(self) -> str:
        return f"rrf:{self.k}:{self.reranker_weight:g}"

    @property
    def name(self) -> str:
        if self.reranker_weight == 0.5:
            return f"rrf(k={self.k})"
        return f"rrf(k={self.k},w={self.reranker_weight:g})"

    def combine(
        self,
        first_stage_ranks: Sequence[int],
        first_stage_scores: Sequence[float | None],
        reranker_scores: Sequence[float],
    ) -> list[float]:
        reranker_ranks = _ranks_by_score(reranker_scores)
        weight = self.reranker_weight
        return [
            weight / (self.k + reranker_rank) + (1.0 - weight) / (self.k + first_rank)
            for reranker_rank, first_rank in zip(reranker_ranks, first_stage_ranks, strict=True)
        ]


class WeightedBlend:
    """Weighted sum of min-max normalized reranker and first-stage scores.

    When any first-stage score is missing the first-stage side is derived from ranks
    (1 / rank), so the blend still has something to lean on.
    """

    def __init__(self, *, reranker_weight: float = 0.5) -> None:
        _check_weight(reranker_weight)
        self.reranker_weight = float(reranker_weight)

    @property
    def spec(self) -> str:
        return f"weighted:{self.reranker_weight:g}"

    @property
    def name(self) -> str:
        return f"weighted(w={self.reranker_weight:g})"

    def combine(
        self,
        first_stage_ranks: Sequence[int],
        first_stage_scores: Sequence[float | None],
        reranker_scores: Sequence[float],
    ) -> list[float]:
        minmax = MinMax()
        if all(score is not None for score in first_stage_scores):
            first_raw = np.asarray(first_stage_scores, dtype=np.float64)
        else:
            first_raw = 1.0 / np.asarray(first_stage_ranks, dtype=np.float64)
        first = minmax(first_raw)
        reranked = minmax(np.asarray(reranker_scores, dtype=np.float64))
        blended = self.reranker_weight * reranked + (1.0 - self.reranker_weight) * first
        return [float(value) for value in blended]


def _check_weight(weight: float) -> None:
    if (
        not isinstance(weight, (int, float))
        or isinstance(weight, bool)
        or not math.isfinite(weight)
        or not 0.0 <= weight <= 1.0
    ):
        raise InvalidInputError(f"blend weight must be a number in [0, 1], got {weight!r}")


def parse_blend(spec: str | Blend | None) -> Blend | None:
    """``"rrf"``, ``"rrf:K"``, ``"rrf:K:W"``, ``"weighted:W"`` (W = reranker weight) or a blend."""
    if spec is None or isinstance(spec, Blend):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"blend must be a string spec or a Blend, got {spec!r}")
    kind, _, argument = spec.strip().lower().partition(":")
    try:
        if kind == "rrf":
            k_text, _, weight_text = argument.partition(":")
            return ReciprocalRankBlend(
                k=int(k_text) if k_text else 60,
                reranker_weight=float(weight_text) if weight_text else 0.5,
            )
        if kind == "weighted":
            return WeightedBlend(reranker_weight=float(argument) if argument else 0.5)
    except ValueError as exc:
        raise InvalidInputError(f"bad blend spec {spec!r}: {exc}") from exc
    raise InvalidInputError(f"unknown blend {spec!r}; expected 'rrf[:K]' or 'weighted[:W]'")
