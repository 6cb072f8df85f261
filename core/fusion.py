"""Fusing several first-stage rankings (BM25, dense, ...) into one candidate list.

Hybrid retrieval runs more than one first stage; the reranker wants one deduplicated list.
Two fusions are offered: reciprocal rank fusion, which needs only ranks and so is immune to
the incomparable score scales of BM25 and cosine similarity, and a weighted sum of min-max
normalized scores, for when the scales carry information worth keeping.

Every fused candidate records where it stood in each input list under the metadata key
:data:`FIRST_STAGE_RANKS_KEY` (``{list name: 1-based rank}``, lists that missed it left
out). Selective policies see only ``(query, candidates)``, so this is how the agreement
policy learns how much the first stages agree. The caller's candidates and their metadata
are never modified: fused candidates are new objects with a new metadata dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from crossrank.errors import InvalidInputError
from crossrank.normalize import MinMax
from crossrank.types import Candidate

#: Metadata key written by fusion: ``{list name: 1-based rank in that list}``.
FIRST_STAGE_RANKS_KEY = "crossrank.first_stage_ranks"
#: Metadata key written by fusion: ``{list name: first-stage score in that list}``.
FIRST_STAGE_SCORES_KEY = "crossrank.first_stage_scores"

RankedLists = Mapping[str, Sequence[Candidate]] | Sequence[Sequence[Candidate]]


def _named_lists(lists: RankedLists) -> dict[str, Sequence[Candidate]]:
    if isinstance(lists, Mapping):
        named = {str(name): ranking for name, ranking in lists.items()}
    elif isinstance(lists, Sequence) and not isinstance(lists, (str, bytes)):
        named = {str(position): ranking for position, ranking in enumerate(lists)}
    else:
        raise InvalidInputError(f"lists must be a mapping or a sequence of lists, got {lists!r}")
    if not named:
        raise InvalidInputError("fusion needs at least one first-stage list")
    for name, ranking in named.items():
        if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
            raise InvalidInputError(f"first-stage list {name!r} must be a sequence of Candidates")
        for position, candidate in enumerate(ranking):
            if not isinstance(candidate, Candidate):
                raise InvalidInputError(
                    f"first-stage list {name!r} item {position} is not a Candidate: {candidate!r}"
                )
    return named


def _weights(
    names: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None
) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, Mapping):
        unknown = set(map(str, weights)) - set(names)
        if unknown:
            raise InvalidInputError(f"weights name unknown lists {sorted(unknown)}; lists: {names}")
        values = [float(weights.get(name, 1.0)) for name in names]
    else:
        values = [float(weight) for weight in weights]
        if len(values) != len(names):
            raise InvalidInputError(f"got {len(values)} weights for {len(names)} lists")
    for name, value in zip(names, values, strict=True):
        if not math.isfinite(value) or value < 0:
            raise InvalidInputError(
                f"weight of list {name!r} must be finite and >= 0, got {value!r}"
            )
    return values


def _key(candidate: Candidate) -> str:
    # Same identity rule as the engine's deduplication: the id, else the text.
    return f"id:{candidate.id}" if candidate.id is not None else f"text:{candidate.text}"


def _fuse(
    named: dict[str, Sequence[Candidate]],
    contributions: dict[str, list[float]],
    limit: int | None,
) -> list[Candidate]:
    fused_scores: dict[str, float] = {}
    first_seen: dict[str, Candidate] = {}
    ranks: dict[str, dict[str, int]] = {}
    scores: dict[str, dict[str, float]] = {}
    for name, ranking in named.items():
        for position, candidate in enumerate(ranking):
            key = _key(candidate)
            if name in ranks.setdefault(key, {}):
                continue  # a duplicate inside one list: its best (first) rank counts
            first_seen.setdefault(key, candidate)
            ranks[key][name] = position + 1
            if candidate.first_stage_score is not None:
                scores.setdefault(key, {})[name] = float(candidate.first_stage_score)
            fused_scores[key] = fused_scores.get(key, 0.0) + contributions[name][position]
    # Stable: ties keep the order of first appearance.
    order = sorted(first_seen, key=lambda key: -fused_scores[key])
    if limit is not None:
        order = order[:limit]
    fused: list[Candidate] = []
    for key in order:
        original = first_seen[key]
        metadata = dict(original.metadata)
        metadata[FIRST_STAGE_RANKS_KEY] = dict(ranks[key])
        metadata[FIRST_STAGE_SCORES_KEY] = dict(scores.get(key, {}))
        fused.append(
            Candidate(
                text=original.text,
                id=original.id,
                first_stage_score=fused_scores[key],
                metadata=metadata,
            )
        )
    return fused


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive integer or None, got {limit!r}")


def reciprocal_rank_fusion(
    lists: RankedLists,
    *,
    k: int = 60,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Candidate]:
    """Fuse ranked lists by ``sum(weight / (k + rank))``; best first, deduplicated by id.

    ``k`` = 60 (Cormack et al.) damps the head so one list cannot dominate. The fused score
    becomes each candidate's ``first_stage_score``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidInputError(f"RRF k must be a non-negative integer, got {k!r}")
    _check_limit(limit)
    named = _named_lists(lists)
    list_weights = _weights(list(named), weights)
    contributions = {
        name: [weight / (k + rank) for rank in range(1, len(ranking) + 1)]
        for (name, ranking), weight in zip(named.items(), list_weights, strict=True)
    }
    return _fuse(named, contributions, limit)


def weighted_score_fusion(
    lists: RankedLists,
    *,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Candidate]:
    """Fuse by ``sum(weight * minmax(score))`` per list; a list's missing docs contribute 0.

    Scores are min-max normalized within each list so BM25's unbounded scores and cosine
    similarities become comparable. Every candidate needs a ``first_stage_score``.
    """
    _check_limit(limit)
    named = _named_lists(lists)
    list_weights = _weights(list(named), weights)
    minmax = MinMax()
    contributions: dict[str, list[float]] = {}
    for (name, ranking), weight in zip(named.items(), list_weights, strict=True):
        raw: list[float] = []
        for position, candidate in enumerate(ranking):
            if candidate.first_stage_score is None:
                raise InvalidInputError(
                    f"weighted fusion needs first_stage_score; list {name!r} item {position} "
                    f"({candidate.id!r}) has none"
                )
            raw.append(float(candidate.first_stage_score))
        normalized = minmax(np.asarray(raw, dtype=np.float64)) if raw else np.zeros(0)
        contributions[name] = [weight * float(value) for value in normalized]
    return _fuse(named, contributions, limit)


__all__ = [
    "FIRST_STAGE_RANKS_KEY",
    "FIRST_STAGE_SCORES_KEY",
    "reciprocal_rank_fusion",
    "weighted_score_fusion",
]
