"""Latency budgets: rerank the head that fits, never lose, duplicate or reorder the rest.

Time is made deterministic where the rule is about time: the backend below advances a fake
clock instead of sleeping, and the engine's clock is that clock. What is checked is the
engine's decision (how deep, when to stop), not how fast a machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrank import BaseBackend, Candidate, InvalidInputError, Reranker
from crossrank import engine as engine_module
from crossrank.budget import CostModel, cost_model_for
from tests.support.backends import keyword_score


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedKeywordBackend(BaseBackend):
    """Keyword scores that cost ``per_call_ms`` plus ``per_text_ms`` each, on a fake clock."""

    name = "timed-keyword"
    batch_size = 4

    def __init__(self, clock: FakeClock, *, per_call_ms: float, per_text_ms: float) -> None:
        self.clock = clock
        self.per_call_ms = per_call_ms
        self.per_text_ms = per_text_ms
        self.calls: list[int] = []

    @property
    def model_name(self) -> str:
        return f"timed-{id(self)}"  # a cost model of its own per test

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls.append(len(texts))
        self.clock.now += (self.per_call_ms + self.per_text_ms * len(texts)) / 1000.0
        return [keyword_score(query, text) for text in texts]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score(query, texts)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(engine_module.time, "perf_counter", fake)
    return fake


def _candidates(count: int) -> list[Candidate]:
    # Later candidates match the query better, so a full rerank reverses the order.
    return [
        Candidate(
            f"doc {index} " + "refund " * (index % 5), id=f"d{index}", first_stage_score=-index
        )
        for index in range(count)
    ]


def test_the_head_that_fits_is_reranked_and_the_rest_keeps_its_place(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=2.0, per_text_ms=5.0)  # 22 ms per chunk
    reranker = Reranker(backend, windowing=False)
    for _ in range(2):  # the first call is not learned from (it pays one-time costs)
        reranker.rerank("refund", _candidates(8))
    result = reranker.rerank("refund", _candidates(40), latency_budget_ms=70.0)
    budget = result.report.budget
    assert budget is not None and result.report.partial
    assert budget.reranked == 12  # three chunks of four fit in 70 ms, a fourth would not
    assert budget.kept_in_first_stage_order == 28
    assert not budget.deadline_hit
    assert budget.predicted_ms is not None and budget.predicted_ms <= 70.0
    assert budget.scoring_ms <= 70.0 * 1.1  # the tolerance: within budget + 10%
    assert sorted(item.first_stage_rank for item in result[:12]) == list(range(1, 13))
    assert [item.first_stage_rank for item in result[12:]] == list(range(13, 41))
    assert all(item.raw_score is None for item in result[12:])
    assert min(item.score for item in result[:12]) >= max(item.score for item in result[12:])


def test_a_slower_call_than_predicted_stops_at_the_deadline(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=2.0, per_text_ms=5.0)
    reranker = Reranker(backend, windowing=False)
    for _ in range(2):
        reranker.rerank("refund", _candidates(8))
    backend.per_text_ms = 20.0  # the machine got busy: chunks now take 82 ms
    result = reranker.rerank("refund", _candidates(40), latency_budget_ms=100.0)
    budget = result.report.budget
    assert budget is not None and budget.deadline_hit
    assert budget.reranked == 4 and budget.kept_in_first_stage_order == 36
    assert len(result) == 40 and len({item.id for item in result}) == 40


def test_a_cold_model_scores_chunk_by_chunk_and_learns(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=0.0, per_text_ms=10.0)
    result = Reranker(backend, windowing=False).rerank(
        "refund", _candidates(20), latency_budget_ms=100.0
    )
    assert backend.calls[:3] == [1, 2, 4]  # no prediction yet: growing chunks
    assert result.report.budget is not None
    # The first chunk is not learned from; the second teaches 10 ms a pair, so after 1 + 2 + 4
    # pairs (70 ms) the next chunk of four (40 ms) would overrun.
    assert result.report.budget.reranked == 7
    assert result.report.budget.scoring_ms <= 100.0
    assert cost_model_for(backend).predict([100]) is not None


def test_no_budget_means_one_call_for_everything(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=1.0, per_text_ms=1.0)
    result = Reranker(backend, windowing=False).rerank("refund", _candidates(30))
    assert backend.calls == [30] and result.report.budget is None and not result.report.partial


def test_a_budget_too_small_for_one_chunk_keeps_the_first_stage(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=50.0, per_text_ms=1.0)
    reranker = Reranker(backend, windowing=False, latency_budget_ms=10.0)
    for _ in range(2):
        reranker.rerank("refund", _candidates(4), latency_budget_ms=1000.0)
    result = reranker.rerank("refund", _candidates(12))
    assert result.report.status == "skipped"
    assert [item.first_stage_rank for item in result] == list(range(1, 13))


def test_async_budget_cuts_a_call_at_the_deadline() -> None:
    class SlowAsync(BaseBackend):
        name = "slow-async"

        async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
            await asyncio.sleep(5)
            return [0.0] * len(texts)

    result = asyncio.run(
        Reranker(SlowAsync()).arerank("q", ["a", "b", "c"], latency_budget_ms=50.0)
    )
    assert result.report.status == "skipped"
    assert result.report.budget is not None and result.report.budget.deadline_hit
    assert [item.text for item in result] == ["a", "b", "c"]


def test_a_model_that_learned_a_slow_spell_tries_again(clock: FakeClock) -> None:
    backend = TimedKeywordBackend(clock, per_call_ms=0.0, per_text_ms=100.0)
    reranker = Reranker(backend, windowing=False)
    for _ in range(3):
        reranker.rerank("refund", _candidates(4))  # 400 ms a chunk
    backend.per_text_ms = 1.0  # the spell is over: 4 ms a chunk
    statuses = [
        reranker.rerank("refund", _candidates(8), latency_budget_ms=50.0).report.status
        for _ in range(20)
    ]
    assert statuses[0] == "skipped"
    assert statuses[-1] == "reranked"  # relaxed until a chunk was tried, then relearned
    assert statuses.count("skipped") < 15


def test_bad_budgets_are_named() -> None:
    for bad in (0, -5, float("nan"), "100", True):
        with pytest.raises(InvalidInputError, match="latency_budget_ms"):
            Reranker("embedding", latency_budget_ms=bad)


def test_cost_model_fits_per_call_and_per_character_costs() -> None:
    model = CostModel()
    model.observe(100, 5000.0)  # a first call (model load, warm-up) is not learned from
    assert not model.ready
    for characters in (100, 400, 800, 1600, 3200):
        model.observe(characters, 5.0 + 0.01 * characters)
    fitted = model.coefficients()
    assert fitted is not None
    assert fitted[0] == pytest.approx(5.0) and fitted[1] == pytest.approx(0.01)
    assert model.predict([1000, 1000]) == pytest.approx(2 * 15.0)
    model.observe(1000, 150.0)  # ten times the prediction: the load changed, start over
    assert model.predict([1000]) == pytest.approx(150.0)


@settings(deadline=None)  # the engine's clock is faked in here, hypothesis's must not be
@given(
    count=st.integers(min_value=1, max_value=40),
    budget_ms=st.floats(min_value=1.0, max_value=400.0),
    per_text_ms=st.floats(min_value=0.5, max_value=30.0),
    windowing=st.booleans(),
)
def test_output_is_always_the_input_with_the_reranked_head_first(
    count: int, budget_ms: float, per_text_ms: float, windowing: bool
) -> None:
    clock = FakeClock()
    original = engine_module.time.perf_counter
    engine_module.time.perf_counter = clock  # type: ignore[assignment]
    try:
        backend = TimedKeywordBackend(clock, per_call_ms=1.0, per_text_ms=per_text_ms)
        reranker = Reranker(backend, windowing=windowing, top_n=None)
        reranker.rerank("refund", _candidates(5))
        candidates = _candidates(count)
        snapshot = list(candidates)
        result = reranker.rerank("refund", candidates, latency_budget_ms=budget_ms)
    finally:
        engine_module.time.perf_counter = original  # type: ignore[assignment]
    assert candidates == snapshot
    assert sorted(item.input_index for item in result) == list(range(count))
    assert all(item.candidate is candidates[item.input_index] for item in result)
    head = result.report.budget.reranked if result.report.budget else count
    assert {item.first_stage_rank for item in result[:head]} == set(range(1, head + 1))
    assert [item.first_stage_rank for item in result[head:]] == list(range(head + 1, count + 1))
