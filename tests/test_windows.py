"""Window planning: coverage, overlap, and aggregation."""

from __future__ import annotations

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
