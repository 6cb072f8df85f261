"""Fusion of first-stage lists: hand-computed RRF and weighted scores, dedup, rank metadata."""

from __future__ import annotations

import pytest

from crossrank import Candidate
from crossrank.errors import InvalidInputError
from crossrank.fusion import (
    FIRST_STAGE_RANKS_KEY,
    reciprocal_rank_fusion,
    weighted_score_fusion,
)


def docs(*ids: str, scores: tuple[float, ...] | None = None) -> list[Candidate]:
    return [
        Candidate(
            text=f"text {doc_id}",
            id=doc_id,
            first_stage_score=None if scores is None else scores[i],
        )
        for i, doc_id in enumerate(ids)
    ]


def test_rrf_matches_hand_computed_scores() -> None:
    fused = reciprocal_rank_fusion(
        {"bm25": docs("a", "b", "c"), "dense": docs("c", "a", "d")}, k=60
    )
    expected = {
        "a": 1 / 61 + 1 / 62,
        "c": 1 / 63 + 1 / 61,
        "b": 1 / 62,
        "d": 1 / 63,
    }
    assert [c.id for c in fused] == ["a", "c", "b", "d"]
    for candidate in fused:
        assert candidate.first_stage_score == pytest.approx(expected[candidate.id])


def test_rrf_records_per_list_ranks_and_keeps_caller_metadata() -> None:
    original = Candidate(text="x", id="a", metadata={"source": "wiki"})
    fused = reciprocal_rank_fusion({"bm25": [original], "dense": [*docs("z"), original]})
    by_id = {c.id: c for c in fused}
    assert by_id["a"].metadata[FIRST_STAGE_RANKS_KEY] == {"bm25": 1, "dense": 2}
    assert by_id["a"].metadata["source"] == "wiki"
    assert by_id["z"].metadata[FIRST_STAGE_RANKS_KEY] == {"dense": 1}
    assert original.metadata == {"source": "wiki"}  # never mutated


def test_rrf_weights_and_limit() -> None:
    fused = reciprocal_rank_fusion(
        [docs("a", "b"), docs("b", "a")], k=0, weights=[1.0, 3.0], limit=1
    )
    # a: 1/1 + 3/2 = 2.5, b: 1/2 + 3/1 = 3.5
    assert [c.id for c in fused] == ["b"]
    assert fused[0].first_stage_score == pytest.approx(3.5)


def test_duplicates_inside_one_list_count_once() -> None:
    fused = reciprocal_rank_fusion({"only": docs("a", "a", "b")}, k=0)
    assert [c.id for c in fused] == ["a", "b"]
    assert fused[0].first_stage_score == pytest.approx(1.0)
    assert fused[1].first_stage_score == pytest.approx(1 / 3)


def test_weighted_fusion_uses_minmax_per_list() -> None:
    bm25 = docs("a", "b", "c", scores=(30.0, 20.0, 10.0))
    dense = docs("c", "b", scores=(0.9, 0.5))
    fused = weighted_score_fusion(
        {"bm25": bm25, "dense": dense}, weights={"bm25": 1.0, "dense": 2.0}
    )
    scores = {c.id: c.first_stage_score for c in fused}
    assert scores == pytest.approx({"a": 1.0, "b": 0.5 + 0.0, "c": 0.0 + 2.0})
    assert [c.id for c in fused] == ["c", "a", "b"]


def test_weighted_fusion_requires_scores() -> None:
    with pytest.raises(InvalidInputError, match="first_stage_score"):
        weighted_score_fusion({"bm25": docs("a")})


@pytest.mark.parametrize(
    ("lists", "kwargs", "message"),
    [
        ({}, {}, "at least one"),
        ({"a": ["not a candidate"]}, {}, "not a Candidate"),
        ({"a": docs("x")}, {"k": -1}, "k must be"),
        ({"a": docs("x")}, {"weights": {"b": 1.0}}, "unknown lists"),
        ({"a": docs("x")}, {"weights": [1.0, 2.0]}, "2 weights for 1"),
        ({"a": docs("x")}, {"limit": 0}, "limit"),
    ],
)
def test_bad_input_is_named(lists: object, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        reciprocal_rank_fusion(lists, **kwargs)  # type: ignore[arg-type]
