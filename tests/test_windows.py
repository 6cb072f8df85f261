"""Window planning: coverage, overlap, and aggregation."""

from __future__ import annotations

import logging

import pytest

from crossrank.errors import InvalidInputError
from crossrank.windows import aggregate, plan_windows
from tests.support.backends import CharWindowBackend


def test_short_texts_are_untouched() -> None:
    plan = plan_windows("q", ["a b", "c"], CharWindowBackend(budget=8), stride=2)
    assert plan.window_texts == ["a b", "c"]
    assert not plan.windowed


def test_windows_overlap_by_stride_and_cover_every_token() -> None:
    text = " ".join(f"w{i}" for i in range(10))
    plan = plan_windows("q", [text], CharWindowBackend(budget=4), stride=2)
    windows = [window.split() for window in plan.window_texts]
    assert windows[0] == ["w0", "w1", "w2", "w3"]
    assert windows[1][:2] == windows[0][2:]
    covered = {token for window in windows for token in window}
    assert covered == set(text.split())
    assert plan.owners == [0] * len(windows)


def test_aggregations() -> None:
    text = " ".join(f"w{i}" for i in range(10))
    plan = plan_windows("q", [text, "short"], CharWindowBackend(budget=4), stride=0)
    window_count = len(plan.window_texts)
    scores = [float(i) for i in range(window_count)]
    assert aggregate(plan, scores, "max") == [window_count - 2, window_count - 1]
    assert aggregate(plan, scores, "first") == [0.0, window_count - 1]
    assert aggregate(plan, scores, "mean")[0] == pytest.approx(
        sum(range(window_count - 1)) / (window_count - 1)
    )
    with pytest.raises(InvalidInputError, match="median"):
        aggregate(plan, scores, "median")  # type: ignore[arg-type]


def test_a_stride_near_the_budget_still_advances_by_half_a_window() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    plan = plan_windows("q", [text], CharWindowBackend(budget=10), stride=9)
    windows = [window.split() for window in plan.window_texts]
    assert len(windows) == 7  # starts 0, 5, ..., 30: not 31 one-token steps
    assert {token for window in windows for token in window} == set(text.split())


def test_a_query_longer_than_the_model_input_leaves_passages_half_the_input(
    tiny_cross_encoder_path,  # type: ignore[no-untyped-def]
) -> None:
    from crossrank import ModelRegistry, Reranker
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), max_length=32, registry=ModelRegistry()
    )
    long_query = " ".join(["cats purr and chase mice"] * 20)  # ~100 tokens, input is 32
    assert backend.window_token_budget(long_query) == (32 - 3) // 2
    passage = " ".join(["dogs bark in the park"] * 12)
    tokens = len(backend.token_spans(passage))
    budget = (32 - 3) // 2
    plan = plan_windows(long_query, [passage], backend, stride=32)
    # Before the floor: a budget of 1 token, so one window per passage token.
    assert tokens / budget <= len(plan.window_texts) <= tokens / (budget // 2) + 1
    result = Reranker(backend).rerank(long_query, [passage, "fish swim"])
    assert result.report.status == "reranked"
    assert sorted(item.input_index for item in result) == [0, 1]


def test_measuring_a_long_passage_raises_no_transformers_warning(
    tiny_cross_encoder_path,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    from crossrank import ModelRegistry, Reranker
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), max_length=32, registry=ModelRegistry()
    )
    passage = " ".join(["dogs bark in the park"] * 40)  # ~200 tokens against a 32-token input
    assert len(backend.token_spans(passage)) > 32
    with caplog.at_level(logging.WARNING, logger="transformers"):
        result = Reranker(backend).rerank("who barks", [passage, "fish swim"])
    assert result.report.status == "reranked"
    assert "indexing errors" not in caplog.text
