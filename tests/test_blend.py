"""Blends on hand-made rankings with known answers."""

from __future__ import annotations

import pytest

from crossrank.blend import ReciprocalRankBlend, WeightedBlend, parse_blend
from crossrank.errors import InvalidInputError


def test_rrf_known_values() -> None:
    # first stage: a, b, c ; reranker prefers c, b, a
    scores = ReciprocalRankBlend(k=60).combine([1, 2, 3], [None, None, None], [0.1, 0.5, 0.9])
    assert scores == pytest.approx([0.5 / 63 + 0.5 / 61, 0.5 / 62 + 0.5 / 62, 0.5 / 61 + 0.5 / 63])


def test_rrf_weight_one_is_reranker_order() -> None:
    scores = ReciprocalRankBlend(k=0, reranker_weight=1.0).combine([1, 2, 3], [None] * 3, [3, 1, 2])
    assert scores == pytest.approx([1.0, 1 / 3, 1 / 2])


def test_weighted_blend_known_values() -> None:
    blend = WeightedBlend(reranker_weight=0.25)
    scores = blend.combine([1, 2, 3], [30.0, 20.0, 10.0], [0.0, 1.0, 2.0])
    # minmax: first stage [1, .5, 0], reranker [0, .5, 1]
    assert scores == pytest.approx([0.75, 0.5, 0.25])


def test_weighted_blend_uses_ranks_when_scores_missing() -> None:
    scores = WeightedBlend(reranker_weight=0.0).combine([1, 2, 4], [1.0, None, 2.0], [5, 5, 5])
    assert scores == pytest.approx([1.0, (0.5 - 0.25) / 0.75, 0.0])


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("rrf", "rrf(k=60)"),
        ("rrf:10", "rrf(k=10)"),
        ("rrf:10:0.8", "rrf(k=10,w=0.8)"),
        ("weighted:0.3", "weighted(w=0.3)"),
    ],
)
def test_parse_blend(spec: str, name: str) -> None:
    blend = parse_blend(spec)
    assert blend is not None and blend.name == name
    assert parse_blend(blend.spec).name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec", ["rff", "weighted:2", "rrf:-1", "rrf:x", 7])
def test_bad_blend_specs(spec: object) -> None:
    with pytest.raises(InvalidInputError):
        parse_blend(spec)  # type: ignore[arg-type]
