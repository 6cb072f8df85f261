"""The engine pipeline: every step, every input error, and the output invariants."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from crossrank import (
    BackendError,
    BackendResponseError,
    Candidate,
    ConfigurationError,
    InvalidInputError,
    NeverRerank,
    Reranker,
)
from tests.support.backends import (
    CharWindowBackend,
    FailingBackend,
    FixedScoresBackend,
    KeywordBackend,
    keyword_score,
)

QUERY = "refunds for digital downloads"
TEXTS = [
    "shipping to europe takes five days",
    "refunds for physical goods within thirty days",
    "refunds for digital downloads before the file is opened",
    "digital gift cards cannot be refunded",
]


def candidates() -> list[Candidate]:
    return [
        Candidate(text=text, id=f"d{i}", first_stage_score=10.0 - i, metadata={"pos": i})
        for i, text in enumerate(TEXTS)
    ]


def test_reranks_by_backend_score() -> None:
    result = Reranker(KeywordBackend()).rerank(QUERY, candidates())
    expected = sorted(range(len(TEXTS)), key=lambda i: -keyword_score(QUERY, TEXTS[i]))
    assert [item.input_index for item in result] == expected
    assert [item.rank for item in result] == [1, 2, 3, 4]
    assert result.report.status == "reranked"
    assert result.report.pairs_scored == 4
    assert result[0].raw_score == pytest.approx(keyword_score(QUERY, TEXTS[2]))


def test_first_stage_rank_and_metadata_are_kept() -> None:
    given = candidates()
    result = Reranker(KeywordBackend()).rerank(QUERY, given)
    for item in result:
        assert item.first_stage_rank == item.input_index + 1
        assert item.candidate is given[item.input_index]
        assert item.candidate.metadata == {"pos": item.input_index}


def test_softmax_scores_form_a_distribution_in_rank_order() -> None:
    result = Reranker(KeywordBackend()).rerank(QUERY, candidates())
    assert sum(result.scores) == pytest.approx(1.0)
    assert result.scores == sorted(result.scores, reverse=True)


@pytest.mark.parametrize(
    ("normalization", "check"),
    [
        ("sigmoid", lambda raw, score: score == pytest.approx(1 / (1 + math.exp(-raw)))),
        ("none", lambda raw, score: score == raw),
    ],
)
def test_pointwise_normalizations(normalization: str, check) -> None:  # type: ignore[no-untyped-def]
    result = Reranker(KeywordBackend(), normalization=normalization).rerank(QUERY, candidates())
    for item in result:
        assert check(item.raw_score, item.score)


def test_minmax_spans_zero_to_one() -> None:
    result = Reranker(KeywordBackend(), normalization="minmax").rerank(QUERY, candidates())
    assert result.scores[0] == 1.0
    assert result.scores[-1] == 0.0


def test_temperature_flattens_softmax() -> None:
    sharp = Reranker(KeywordBackend(), temperature=0.5).rerank(QUERY, candidates())
    flat = Reranker(KeywordBackend(), temperature=5.0).rerank(QUERY, candidates())
    assert sharp.scores[0] > flat.scores[0]


def test_top_n_and_threshold() -> None:
    reranker = Reranker(KeywordBackend(), normalization="minmax")
    assert len(reranker.rerank(QUERY, candidates(), top_n=2)) == 2
    kept = reranker.rerank(QUERY, candidates(), threshold=0.5)
    assert kept.scores and all(score >= 0.5 for score in kept.scores)
    assert len(kept) < len(TEXTS)
    # defaults on the reranker, overridden per call
    assert len(Reranker(KeywordBackend(), top_n=1).rerank(QUERY, candidates())) == 1
    assert len(Reranker(KeywordBackend(), top_n=1).rerank(QUERY, candidates(), top_n=3)) == 3


def test_duplicates_by_id_then_text_first_occurrence_wins() -> None:
    given = [
        Candidate("alpha refunds", id="a"),
        Candidate("different text same id", id="a"),
        Candidate("digital refunds"),
        Candidate("digital refunds"),
        Candidate("digital refunds", id="c"),
    ]
    result = Reranker(KeywordBackend()).rerank(QUERY, given)
    assert sorted(item.input_index for item in result) == [0, 2, 4]
    duplicates = {(d.input_index, d.kept_input_index, d.reason) for d in result.report.duplicates}
    assert duplicates == {(1, 0, "id"), (3, 2, "text")}


def test_deduplicate_off_keeps_everything() -> None:
    given = [Candidate("x refunds"), Candidate("x refunds")]
    result = Reranker(KeywordBackend(), deduplicate=False).rerank(QUERY, given)
    assert sorted(item.input_index for item in result) == [0, 1]


def test_output_is_permutation_of_subset_without_duplicates() -> None:
    given = [*candidates(), Candidate(TEXTS[0], id="d0")]
    result = Reranker(KeywordBackend()).rerank(QUERY, given, top_n=3)
    indices = [item.input_index for item in result]
    assert len(indices) == len(set(indices)) == 3
    assert all(given[item.input_index] is item.candidate for item in result)


def test_plain_strings_are_accepted() -> None:
    result = Reranker(KeywordBackend()).rerank(QUERY, TEXTS)
    assert {item.text for item in result} == set(TEXTS)
    assert all(item.id is None for item in result)


def test_empty_input_loads_nothing() -> None:
    backend = KeywordBackend()
    result = Reranker(backend).rerank(QUERY, [])
    assert len(result) == 0
    assert result.report.status == "empty"
    assert backend.calls == []


def test_empty_input_with_model_backend_never_loads_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A path that does not exist would fail to load: an empty call must not even try.
    reranker = Reranker("cross-encoder", model=str(tmp_path / "missing-model"))
    assert reranker.rerank(QUERY, []).report.status == "empty"


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("", "empty"), ("   ", "empty"), (None, "NoneType"), (42, "int")],
)
def test_bad_query_is_named(query: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        Reranker(KeywordBackend()).rerank(query, TEXTS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([Candidate(text=None)], "candidate 0.*no usable text"),  # type: ignore[arg-type]
        ([Candidate(text=b"bytes")], "bytes"),  # type: ignore[arg-type]
        (["ok", 3], "candidate 1 must be a Candidate or str, got int"),
        ([Candidate("x", first_stage_score=float("nan"))], "finite, got nan"),
        ([Candidate("x", first_stage_score=float("inf"))], "finite, got inf"),
        ([Candidate("x", first_stage_score="high")], "must be a number"),  # type: ignore[arg-type]
        ([Candidate("x", id=7)], "id must be a string"),  # type: ignore[arg-type]
        ("a string", "sequence of Candidate"),
    ],
)
def test_bad_candidates_are_named(items: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        Reranker(KeywordBackend()).rerank(QUERY, items)  # type: ignore[arg-type]


@pytest.mark.parametrize("top_n", [0, -1, 1.5, True, "3"])
def test_bad_top_n(top_n: object) -> None:
    with pytest.raises(InvalidInputError, match="top_n"):
        Reranker(KeywordBackend()).rerank(QUERY, TEXTS, top_n=top_n)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="top_n"):
        Reranker(KeywordBackend(), top_n=top_n)  # type: ignore[arg-type]


def test_unknown_normalization() -> None:
    with pytest.raises(InvalidInputError, match="unknown normalization 'zscore'"):
        Reranker(KeywordBackend(), normalization="zscore")


@pytest.mark.parametrize(
    ("normalization", "threshold"),
    [("softmax", 1.5), ("sigmoid", -0.1), ("minmax", float("nan")), ("none", float("inf"))],
)
def test_threshold_out_of_range(normalization: str, threshold: float) -> None:
    with pytest.raises(InvalidInputError, match="threshold"):
        Reranker(KeywordBackend(), normalization=normalization, threshold=threshold)


def test_threshold_on_raw_scores_may_be_negative() -> None:
    result = Reranker(KeywordBackend(), normalization="none", threshold=-5.0).rerank(QUERY, TEXTS)
    assert len(result) == len(TEXTS)


def test_caller_candidates_are_not_mutated() -> None:
    given = candidates()
    snapshot = [(c.text, c.id, c.first_stage_score, dict(c.metadata)) for c in given]
    Reranker(KeywordBackend(), top_n=2).rerank(QUERY, given)
    assert [(c.text, c.id, c.first_stage_score, dict(c.metadata)) for c in given] == snapshot


def test_failing_backend_falls_back_to_first_stage(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        result = Reranker(FailingBackend(), top_n=3).rerank(QUERY, candidates())
    assert result.report.status == "fallback"
    assert result.report.fell_back
    assert "scoring exploded" in (result.report.error or "")
    assert [item.input_index for item in result] == [0, 1, 2]
    assert all(item.raw_score is None for item in result)
    assert result.scores == sorted(result.scores, reverse=True)
    assert sum(1 for record in caplog.records if "first-stage order" in record.message) == 1


def test_strict_mode_raises_backend_error() -> None:
    with pytest.raises(BackendError, match="scoring exploded"):
        Reranker(FailingBackend(), strict=True).rerank(QUERY, candidates())


@pytest.mark.parametrize(
    ("scores", "fragment"),
    [([1.0, 2.0], "returned 2 scores for 4 texts"), ([1.0, float("nan"), 0.0, 0.0], "non-finite")],
)
def test_bad_backend_output_never_reorders(scores: list[float], fragment: str) -> None:
    result = Reranker(FixedScoresBackend(scores)).rerank(QUERY, candidates())
    assert result.report.status == "fallback"
    assert fragment in (result.report.error or "")
    assert [item.input_index for item in result] == [0, 1, 2, 3]
    with pytest.raises(BackendResponseError, match=fragment):
        Reranker(FixedScoresBackend(scores), strict=True).rerank(QUERY, candidates())


def test_selective_skip_returns_first_stage_order_normalized() -> None:
    backend = KeywordBackend()
    result = Reranker(backend, selective=NeverRerank()).rerank(QUERY, candidates())
    assert result.report.status == "skipped"
    assert result.report.selective is not None and not result.report.selective.rerank
    assert backend.calls == []
    assert [item.input_index for item in result] == [0, 1, 2, 3]
    assert sum(result.scores) == pytest.approx(1.0)


def test_first_stage_without_scores_is_scored_by_rank() -> None:
    result = Reranker(KeywordBackend(), selective=NeverRerank()).rerank(QUERY, TEXTS)
    assert result.scores == sorted(result.scores, reverse=True)
    assert result.scores[0] > result.scores[-1]


def test_windows_cover_long_texts_and_aggregate() -> None:
    backend = CharWindowBackend(budget=4)
    long_text = "one two three four five six seven eight nine digital downloads"
    reranker = Reranker(backend, window_stride=1, normalization="none")
    result = reranker.rerank(QUERY, [long_text, "refunds shipping"])
    # the query terms sit in the last window only; max aggregation finds them
    assert result[0].text == long_text
    sent = backend.calls[-1][1]
    assert len(sent) > 2
    assert any("digital downloads" in window for window in sent)
    assert result.report.windows_scored == len(sent)
    assert result.report.pairs_scored == 2


def test_window_aggregation_first_reads_only_the_start() -> None:
    long_text = "one two three four five six seven eight nine digital downloads"
    result = Reranker(
        CharWindowBackend(budget=4), window_aggregation="first", normalization="none"
    ).rerank(QUERY, [long_text, "refunds shipping"])
    assert result[0].text == "refunds shipping"


def test_windowing_off_sends_whole_texts() -> None:
    backend = CharWindowBackend(budget=4)
    Reranker(backend, windowing=False).rerank(QUERY, ["a b c d e f g h i j", "x"])
    assert backend.calls[-1][1] == ["a b c d e f g h i j", "x"]


def test_bad_window_options() -> None:
    with pytest.raises(InvalidInputError, match="window_aggregation"):
        Reranker(KeywordBackend(), window_aggregation="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="window_stride"):
        Reranker(KeywordBackend(), window_stride=-1)


def test_blend_is_recorded_and_changes_scores() -> None:
    plain = Reranker(KeywordBackend()).rerank(QUERY, candidates())
    blended = Reranker(KeywordBackend(), blend="rrf").rerank(QUERY, candidates())
    assert blended.report.blend == "rrf(k=60)"
    assert plain.report.blend is None
    assert [i.raw_score for i in blended] != [i.raw_score for i in plain]


async def test_async_matches_sync() -> None:
    reranker = Reranker(KeywordBackend(), top_n=3)
    sync = reranker.rerank(QUERY, candidates())
    result = await reranker.arerank(QUERY, candidates())
    assert [i.input_index for i in result] == [i.input_index for i in sync]
    assert result.scores == sync.scores


async def test_async_fallback_and_strict() -> None:
    assert (await Reranker(FailingBackend()).arerank(QUERY, TEXTS)).report.status == "fallback"
    with pytest.raises(BackendError):
        await Reranker(FailingBackend(), strict=True).arerank(QUERY, TEXTS)


async def test_async_cancellation_propagates() -> None:
    class Hanging(KeywordBackend):
        async def ascore(self, query, texts):  # type: ignore[no-untyped-def]
            await asyncio.sleep(30)
            return []

    task = asyncio.create_task(Reranker(Hanging()).arerank(QUERY, TEXTS))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_report_timings_and_identity() -> None:
    result = Reranker(KeywordBackend()).rerank(QUERY, candidates())
    assert {"validate", "score", "total"} <= set(result.report.timings_ms)
    assert result.report.backend == "keyword"
    assert result.report.model == "keyword-overlap"


def test_results_are_deterministic_with_ties() -> None:
    tied = [Candidate(f"no match {i}", id=str(i)) for i in range(6)]
    first = Reranker(FixedScoresBackend([0.0] * 6)).rerank(QUERY, tied)
    assert [item.id for item in first] == [str(i) for i in range(6)]


def test_backend_by_unknown_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown backend 'nope'"):
        Reranker("nope")


def test_unknown_backend_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        Reranker("cross-encoder", backend_options={"api_key": "k"})


def test_model_with_instance_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="backend is given by name"):
        Reranker(KeywordBackend(), model="x")


def test_config_round_trip_keeps_behaviour(tiny_cross_encoder_path) -> None:  # type: ignore[no-untyped-def]
    reranker = Reranker(
        "cross-encoder",
        model=str(tiny_cross_encoder_path),
        top_n=2,
        normalization="sigmoid",
        blend="weighted:0.7",
        window_stride=16,
    )
    config = reranker.to_config()
    again = Reranker.from_config(config)
    assert again.to_config() == config
    assert again.rerank(QUERY, TEXTS).scores == reranker.rerank(QUERY, TEXTS).scores


def test_config_never_holds_secrets() -> None:
    reranker = Reranker("cross-encoder", model="m")
    reranker._backend_spec = ("cross-encoder", {"model": "m", "api_key": "sk-secret"})
    assert "sk-secret" not in repr(reranker.to_config())


def test_config_of_instance_backend_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="KeywordBackend instance"):
        Reranker(KeywordBackend()).to_config()


def test_from_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigurationError, match="unknown reranker config keys"):
        Reranker.from_config({"backend": "cross-encoder", "colour": "blue"})


def test_calibrated_reranker_skips_with_softmax_over_first_stage() -> None:
    from crossrank.calibration import PlattCalibrator

    calibrator = PlattCalibrator(slope=1.0, intercept=0.0)
    reranked = Reranker(KeywordBackend(), normalization=calibrator).rerank(QUERY, candidates())
    assert reranked.report.normalization == "platt"
    skipped = Reranker(KeywordBackend(), normalization=calibrator, selective=NeverRerank()).rerank(
        QUERY, candidates()
    )
    assert skipped.report.normalization == "softmax"
    assert sum(skipped.scores) == pytest.approx(1.0)
