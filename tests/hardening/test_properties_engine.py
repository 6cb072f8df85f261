"""Properties of :class:`crossrank.Reranker` that must hold for every input.

The deterministic keyword backend (real scoring by term overlap) drives the generated cases;
the tiny cross-encoder (a real transformer with a real tokenizer) runs a few hostile
examples, since tokenizers are where odd Unicode usually breaks things.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossrank import (
    Candidate,
    InvalidInputError,
    ModelRegistry,
    NeverRerank,
    Reranker,
    RerankResult,
)
from crossrank.normalize import MinMax, Softmax
from tests.hardening.strategies import (
    TRICKY_CHARACTERS,
    candidate_lists,
    dedup_key,
    finite_scores,
    first_occurrences,
    query_text,
    snapshot,
    tricky_text,
)
from tests.support.backends import CharWindowBackend, FixedScoresBackend, KeywordBackend

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NORMALIZATIONS = ("softmax", "sigmoid", "minmax", "none")
BOUNDED = ("softmax", "sigmoid", "minmax")


def check_result(
    candidates: Sequence[Candidate],
    result: RerankResult,
    *,
    deduplicate: bool = True,
    top_n: int | None = None,
) -> None:
    """What every result must satisfy, whatever the scores."""
    indices = [item.input_index for item in result]
    assert len(set(indices)) == len(indices), "a candidate came back twice"
    kept = first_occurrences(candidates) if deduplicate else list(range(len(candidates)))
    assert set(indices) <= set(kept), "a dropped duplicate or an unknown index came back"
    for rank, item in enumerate(result, start=1):
        assert item.rank == rank
        # The very object the caller passed: id, text and metadata untouched by construction.
        assert item.candidate is candidates[item.input_index]
        assert item.first_stage_rank == kept.index(item.input_index) + 1
        assert math.isfinite(item.score), f"non-finite score {item.score!r}"
    if deduplicate:
        keys = [dedup_key(item.candidate) for item in result]
        assert len(set(keys)) == len(keys)
    if top_n is not None:
        assert len(result) <= top_n
    assert {duplicate.input_index for duplicate in result.report.duplicates} == (
        set(range(len(candidates))) - set(kept) if deduplicate else set()
    )


def same_ranking(left: RerankResult, right: RerankResult) -> bool:
    return [(item.input_index, item.score, item.raw_score) for item in left] == [
        (item.input_index, item.score, item.raw_score) for item in right
    ]


# -- permutation, integrity, immutability -----------------------------------------------------


@PROPERTY_SETTINGS
@given(
    query=query_text,
    candidates=candidate_lists(),
    normalization=st.sampled_from(NORMALIZATIONS),
    deduplicate=st.booleans(),
)
def test_output_is_a_permutation_of_a_subset_with_everything_intact(
    query: str, candidates: list[Candidate], normalization: str, deduplicate: bool
) -> None:
    before = snapshot(candidates)
    caller_list = list(candidates)
    reranker = Reranker(KeywordBackend(), normalization=normalization, deduplicate=deduplicate)
    result = reranker.rerank(query, candidates)
    check_result(candidates, result, deduplicate=deduplicate)
    # Without top_n or threshold nothing but duplicates is dropped.
    expected = first_occurrences(candidates) if deduplicate else list(range(len(candidates)))
    assert sorted(item.input_index for item in result) == expected
    assert result.report.status == ("reranked" if candidates else "empty")
    # The caller's list and every object in it are unchanged.
    assert candidates == caller_list and all(
        a is b for a, b in zip(candidates, caller_list, strict=True)
    )
    assert snapshot(candidates) == before


@PROPERTY_SETTINGS
@given(query=query_text, texts=st.lists(tricky_text, max_size=20))
def test_plain_strings_come_back_as_the_same_strings(query: str, texts: list[str]) -> None:
    result = Reranker(KeywordBackend()).rerank(query, texts)
    assert sorted(item.input_index for item in result) == first_occurrences(
        [Candidate(text) for text in texts]
    )
    for item in result:
        assert item.text == texts[item.input_index]
        assert item.id is None


@PROPERTY_SETTINGS
@given(query=query_text, candidates=candidate_lists(min_size=1))
def test_order_follows_raw_scores_and_normalized_scores_agree(
    query: str, candidates: list[Candidate]
) -> None:
    for normalization in NORMALIZATIONS:
        result = Reranker(KeywordBackend(), normalization=normalization).rerank(query, candidates)
        raw = [item.raw_score for item in result]
        assert all(value is not None for value in raw)
        assert raw == sorted(raw, reverse=True)  # type: ignore[type-var]
        scores = result.scores
        # Every normalization is monotone, so scores never increase down the list.
        assert all(a >= b for a, b in itertools.pairwise(scores))
        if normalization in BOUNDED:
            assert all(0.0 <= score <= 1.0 for score in scores)
        if normalization == "softmax":
            assert math.isclose(sum(scores), 1.0, rel_tol=1e-9)
        # Equal raw scores keep first-stage order (the sort is stable).
        for a, b in zip(result, result.ranked[1:], strict=False):
            if a.raw_score == b.raw_score:
                assert a.first_stage_rank < b.first_stage_rank


# -- top_n and thresholds ---------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    query=query_text,
    candidates=candidate_lists(min_size=1),
    normalization=st.sampled_from(NORMALIZATIONS),
)
def test_top_n_is_a_prefix_and_monotone(
    query: str, candidates: list[Candidate], normalization: str
) -> None:
    reranker = Reranker(KeywordBackend(), normalization=normalization)
    full = reranker.rerank(query, candidates)
    previous: list[int] = []
    for top_n in range(1, len(full) + 2):
        result = reranker.rerank(query, candidates, top_n=top_n)
        check_result(candidates, result, top_n=top_n)
        indices = [item.input_index for item in result]
        assert indices == [item.input_index for item in full][:top_n]
        assert result.scores == full.scores[:top_n]  # scores do not depend on the cut
        assert indices[: len(previous)] == previous
        previous = indices


@PROPERTY_SETTINGS
@given(
    query=query_text,
    candidates=candidate_lists(min_size=1),
    normalization=st.sampled_from(BOUNDED),
    thresholds=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5),
    top_n=st.one_of(st.none(), st.integers(1, 30)),
)
def test_threshold_filters_monotonically(
    query: str,
    candidates: list[Candidate],
    normalization: str,
    thresholds: list[float],
    top_n: int | None,
) -> None:
    reranker = Reranker(KeywordBackend(), normalization=normalization)
    full = reranker.rerank(query, candidates)
    kept_sets = []
    for threshold in sorted(thresholds):
        result = reranker.rerank(query, candidates, threshold=threshold, top_n=top_n)
        check_result(candidates, result, top_n=top_n)
        expected = [item.input_index for item in full if item.score >= threshold]
        if top_n is not None:
            expected = expected[:top_n]
        assert [item.input_index for item in result] == expected
        assert all(item.score >= threshold for item in result)
        kept_sets.append({item.input_index for item in result})
    if top_n is None:  # a higher threshold keeps a subset of what a lower one kept
        assert all(b <= a for a, b in itertools.pairwise(kept_sets))


@PROPERTY_SETTINGS
@given(query=query_text, candidates=candidate_lists(min_size=1, with_scores=True))
def test_first_stage_paths_keep_order_and_respect_top_n(
    query: str, candidates: list[Candidate]
) -> None:
    for reranker in (
        Reranker(KeywordBackend(), selective=NeverRerank()),
        Reranker(FixedScoresBackend([]), normalization="sigmoid"),  # wrong count: fallback
    ):
        result = reranker.rerank(query, candidates, top_n=3)
        check_result(candidates, result, top_n=3)
        assert result.report.status in ("skipped", "fallback")
        assert [item.input_index for item in result] == first_occurrences(candidates)[:3]
        assert all(item.raw_score is None for item in result)


# -- determinism ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    query=query_text,
    candidates=candidate_lists(),
    normalization=st.sampled_from(NORMALIZATIONS),
    top_n=st.one_of(st.none(), st.integers(1, 10)),
)
def test_results_are_deterministic_sync_async_and_across_instances(
    query: str, candidates: list[Candidate], normalization: str, top_n: int | None
) -> None:
    first = Reranker(KeywordBackend(), normalization=normalization).rerank(
        query, candidates, top_n=top_n
    )
    reranker = Reranker(KeywordBackend(), normalization=normalization)
    again = reranker.rerank(query, candidates, top_n=top_n)
    asynchronous = asyncio.run(reranker.arerank(query, candidates, top_n=top_n))
    assert same_ranking(first, again)
    assert same_ranking(first, asynchronous)
    assert first.report.status == asynchronous.report.status


# -- normalization on ties, single candidates and extreme scores ------------------------------


@PROPERTY_SETTINGS
@given(
    raw=st.lists(finite_scores, min_size=1, max_size=30),
    normalization=st.sampled_from(NORMALIZATIONS),
    temperature=st.sampled_from([1.0, 2.0, 10.0]),
)
def test_normalization_is_well_defined_on_any_finite_scores(
    raw: list[float], normalization: str, temperature: float
) -> None:
    reranker = Reranker(
        FixedScoresBackend(raw), normalization=normalization, temperature=temperature
    )
    texts = [f"passage {index}" for index in range(len(raw))]
    result = reranker.rerank("query", texts)
    assert result.report.status == "reranked"
    assert sorted(item.input_index for item in result) == list(range(len(raw)))
    assert [item.raw_score for item in result] == sorted(raw, reverse=True)
    scores = result.scores
    assert all(math.isfinite(score) for score in scores)
    assert all(a >= b for a, b in itertools.pairwise(scores))
    if normalization in BOUNDED:
        assert all(0.0 <= score <= 1.0 for score in scores)
    if normalization == "softmax":
        assert math.isclose(sum(scores), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_ties_and_single_candidates(normalization: str) -> None:
    tied = Reranker(FixedScoresBackend([2.5] * 4), normalization=normalization)
    result = tied.rerank("query", ["w", "x", "y", "z"])
    assert [item.input_index for item in result] == [0, 1, 2, 3]  # ties keep first-stage order
    assert len(set(result.scores)) == 1
    expected_tie = {"softmax": 0.25, "minmax": 1.0, "sigmoid": 1 / (1 + math.exp(-2.5))}
    if normalization in expected_tie:
        assert result.scores[0] == pytest.approx(expected_tie[normalization])

    single = Reranker(FixedScoresBackend([-3.0]), normalization=normalization)
    only = single.rerank("query", ["alone"])
    expected_single = {"softmax": 1.0, "minmax": 1.0, "sigmoid": 1 / (1 + math.exp(3.0))}
    assert only.scores == [pytest.approx(expected_single.get(normalization, -3.0))]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(
    "raw",
    [[1e308, -1e308, 0.0], [1.7976931348623157e308] * 3, [5e-324, -5e-324, 0.0], [-1e300, -1e300]],
)
def test_extreme_scores_give_finite_ordered_scores(normalization: str, raw: list[float]) -> None:
    result = Reranker(FixedScoresBackend(raw), normalization=normalization).rerank(
        "query", [f"t{index}" for index in range(len(raw))]
    )
    assert result.report.status == "reranked"
    assert all(math.isfinite(score) for score in result.scores)
    assert [item.raw_score for item in result] == sorted(raw, reverse=True)


def test_softmax_with_low_temperature_survives_extreme_scores() -> None:
    assert np.all(np.isfinite(Softmax(temperature=0.5)(np.array([1.7e308, 0.0]))))
    result = Reranker(FixedScoresBackend([1.7e308, 0.0]), temperature=0.5).rerank(
        "query", ["a", "b"]
    )
    assert all(math.isfinite(score) for score in result.scores)


def test_minmax_keeps_resolution_when_the_range_overflows() -> None:
    scores = MinMax()(np.array([1.7e308, 0.0, -1.7e308]))
    assert list(scores) == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@PROPERTY_SETTINGS
@given(candidates=candidate_lists(min_size=1, max_size=8), position=st.integers(0, 7))
def test_non_finite_first_stage_scores_are_rejected_by_name(
    bad: float, candidates: list[Candidate], position: int
) -> None:
    position = position % len(candidates)
    broken = list(candidates)
    broken[position] = Candidate(text="broken", id="broken-id", first_stage_score=bad)
    for reranker in (
        Reranker(KeywordBackend()),
        Reranker(KeywordBackend(), selective=NeverRerank()),
    ):
        with pytest.raises(InvalidInputError, match=rf"candidate {position} .*finite.*{bad!r}"):
            reranker.rerank("refund", broken)
        with pytest.raises(InvalidInputError, match="finite"):
            asyncio.run(reranker.arerank("refund", broken))


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        (Candidate(text=None, id="x"), "no usable text"),  # type: ignore[arg-type]
        (Candidate(text=b"bytes"), "no usable text"),  # type: ignore[arg-type]
        (Candidate(text="ok", id=7), "id must be a string"),  # type: ignore[arg-type]
        (Candidate(text="ok", first_stage_score="0.5"), "must be a number"),  # type: ignore[arg-type]
        (Candidate(text="ok", first_stage_score=True), "must be a number"),  # type: ignore[arg-type]
    ],
)
def test_unusable_candidates_are_named(candidate: Candidate, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        Reranker(KeywordBackend()).rerank("refund", [Candidate("fine"), candidate])


# -- size and shape extremes ------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_candidates() -> None:
    candidates = [
        Candidate(
            text=f"{TRICKY_CHARACTERS[index % len(TRICKY_CHARACTERS)]} refund {index % 97}",
            id=f"doc-{index % 9000}",  # a thousand ids repeat with other texts
            first_stage_score=float(-index),
            metadata={"position": index, "nested": {"raw": b"\x00\xff"}},
        )
        for index in range(10_000)
    ]
    before = snapshot(candidates)
    reranker = Reranker(KeywordBackend())
    result = reranker.rerank("refund 42", candidates)
    check_result(candidates, result)
    assert len(result) == 9_000
    assert len(result.report.duplicates) == 1_000
    assert math.isclose(sum(result.scores), 1.0, rel_tol=1e-9)
    top = reranker.rerank("refund 42", candidates, top_n=10)
    assert [item.input_index for item in top] == [item.input_index for item in result][:10]
    assert snapshot(candidates) == before


def test_hundred_thousand_character_texts_with_and_without_windows() -> None:
    long_text = ("refund " + "\u200b\u05d0 \U0001f44d\U0001f3fd e\u0301 \x00 ") * 8_000
    long_text = long_text[:100_000]
    assert len(long_text) == 100_000
    candidates = [
        Candidate("short passage about shipping", id="short"),
        Candidate(long_text, id="long"),
        Candidate(long_text + " berlin", id="longer"),
    ]
    for backend in (KeywordBackend(), CharWindowBackend(budget=64)):
        result = Reranker(backend).rerank("refund berlin", candidates)
        check_result(candidates, result)
        assert result.report.status == "reranked"
        assert len(result) == 3
        if isinstance(backend, CharWindowBackend):  # windows find both terms at the very end
            assert result[0].id == "longer"
    windowed = Reranker(CharWindowBackend(budget=64)).rerank("refund", candidates)
    assert windowed.report.windows_scored > 1_000  # every token of the long texts was read


@PROPERTY_SETTINGS
@given(query=query_text, candidates=candidate_lists(max_size=10))
def test_windowing_never_changes_which_candidates_come_back(
    query: str, candidates: list[Candidate]
) -> None:
    for budget in (1, 3, 50):
        result = Reranker(CharWindowBackend(budget=budget), window_stride=1).rerank(
            query, candidates
        )
        check_result(candidates, result)
        assert sorted(item.input_index for item in result) == first_occurrences(candidates)


def test_duplicate_ids_with_different_texts_keep_the_first() -> None:
    candidates = [
        Candidate("refund policy", id="same", metadata={"version": 1}),
        Candidate("completely different refund refund text", id="same", metadata={"version": 2}),
        Candidate("refund", id=None),
        Candidate("refund", id=None),
    ]
    result = Reranker(KeywordBackend()).rerank("refund", candidates)
    check_result(candidates, result)
    assert sorted(item.input_index for item in result) == [0, 2]
    kept = next(item for item in result if item.id == "same")
    assert kept.candidate.metadata == {"version": 1}
    reasons = {(d.input_index, d.kept_input_index, d.reason) for d in result.report.duplicates}
    assert reasons == {(1, 0, "id"), (3, 2, "text")}


# -- the tiny cross-encoder on hostile text ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reranker(tiny_cross_encoder_path: Path) -> Reranker:
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=ModelRegistry()
    )
    return Reranker(backend, strict=True)


@pytest.mark.parametrize("character", TRICKY_CHARACTERS)
def test_tiny_cross_encoder_reads_every_kind_of_character(
    tiny_reranker: Reranker, character: str
) -> None:
    candidates = [
        Candidate(f"refunds {character} digital downloads", id="one", metadata={1: None}),
        Candidate(character * 50, id="two"),
        Candidate(f"{character}", id="three"),
        Candidate("", id="empty"),
    ]
    result = tiny_reranker.rerank(f"refund {character}", candidates)
    check_result(candidates, result)
    assert result.report.status == "reranked"
    again = tiny_reranker.rerank(f"refund {character}", candidates)
    assert same_ranking(result, again)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=query_text, candidates=candidate_lists(min_size=1, max_size=6))
def test_tiny_cross_encoder_properties(
    tiny_reranker: Reranker, query: str, candidates: list[Candidate]
) -> None:
    result = tiny_reranker.rerank(query, candidates)
    check_result(candidates, result)
    assert result.report.status == "reranked"
    raw = [item.raw_score for item in result]
    assert raw == sorted(raw, reverse=True)  # type: ignore[type-var]
    assert math.isclose(sum(result.scores), 1.0, rel_tol=1e-6)


def test_tiny_cross_encoder_on_a_hundred_thousand_characters(tiny_reranker: Reranker) -> None:
    long_text = ("refunds for digital downloads \u05d0 \U0001f44d e\u0301 ") * 3_000
    long_text = long_text[:100_000]
    candidates = [Candidate("refunds", id="short"), Candidate(long_text, id="long")]
    result = tiny_reranker.rerank("refunds for digital downloads", candidates)
    check_result(candidates, result)
    assert result.report.windows_scored > 100


def test_lone_surrogates_are_refused_naming_the_text_for_every_backend(
    tiny_cross_encoder_path: Path,
) -> None:
    """A lone surrogate cannot be encoded as UTF-8: refused up front, whichever backend."""
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=ModelRegistry()
    )
    candidates = [Candidate("refund", id="t"), Candidate("refund \ud800 policy", id="s")]
    for reranker in (Reranker(backend), Reranker(KeywordBackend(), strict=False)):
        with pytest.raises(InvalidInputError, match=r"candidate 1 \(id='s'\).*character 7"):
            reranker.rerank("refund", candidates)
        with pytest.raises(InvalidInputError, match="query holds a lone surrogate"):
            reranker.rerank("refund \udfff", candidates[:1])
