"""Sliding-window listwise ranking without HTTP: plans, prompts, answers and repairs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrank import ConfigurationError
from crossrank.backends.base import Ranking
from crossrank.backends.listwise import (
    ListwiseOptions,
    ParsedOrder,
    SlidingWindow,
    build_messages,
    parse_order,
    truncate_tokens,
    window_spans,
)

# -- window plan ----------------------------------------------------------------------------


def test_windows_run_from_the_end_of_the_list_to_its_start() -> None:
    assert window_spans(45, 20, 10) == [(25, 45), (15, 35), (5, 25), (0, 15)]
    assert window_spans(20, 20, 10) == [(0, 20)]
    assert window_spans(7, 20, 10) == [(0, 7)]
    assert window_spans(30, 20, 10) == [(10, 30), (0, 20)]
    assert window_spans(0, 20, 10) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 0}, "window"),
        ({"window": 1, "step": 1}, "window must be at least 2"),
        ({"step": 20}, "step=20 with window=20"),
        ({"passes": 0}, "passes"),
        ({"passage_tokens": True}, "passage_tokens"),
        ({"window": "20"}, "'20'"),
    ],
)
def test_bad_options_name_the_bad_value(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ListwiseOptions(**options)  # type: ignore[arg-type]


# -- prompt ---------------------------------------------------------------------------------


def test_passages_are_truncated_to_the_token_budget() -> None:
    assert truncate_tokens("one two  three four", 3) == "one two  three"
    assert truncate_tokens("one two", 3) == "one two"
    spans = [(0, 2), (2, 4), (4, 6)]
    assert truncate_tokens("abcdef", 2, lambda text: spans) == "abcd"


def test_the_prompt_numbers_every_passage_on_one_line() -> None:
    messages = build_messages(
        "what is bm25?", ["BM25 ranks\ndocuments", "Cats purr " + "x " * 50], passage_tokens=5
    )
    assert [message["role"] for message in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "Query: what is bm25?" in user
    assert "[1] BM25 ranks documents\n" in user
    assert "[2] Cats purr x x x\n" in user
    assert "all 2 passages" in user


# -- answers --------------------------------------------------------------------------------


def test_a_clean_answer_needs_no_repair() -> None:
    assert parse_order("[2] > [3] > [1]", 3) == ParsedOrder((1, 2, 0))
    assert parse_order("2 > 3 > 1", 3) == ParsedOrder((1, 2, 0))
    assert parse_order("[2, 3, 1]", 3) == ParsedOrder((1, 2, 0))
    assert parse_order("<think>maybe [1] first</think>[3] > [2] > [1]", 3) == ParsedOrder((2, 1, 0))


@pytest.mark.parametrize(
    ("answer", "order", "repair"),
    [
        ("[2] > [1]", (1, 0, 2), "identifier(s) 3 missing"),
        ("[2] > [2] > [3] > [1]", (1, 2, 0), "identifier 2 repeated"),
        ("[9] > [3] > [1] > [2]", (2, 0, 1), "identifier 9 outside 1..3"),
        ("[b] > [3] > [1] > [2]", (2, 0, 1), "non-numeric identifier [b]"),
        ("I cannot rank these.", (0, 1, 2), "no identifiers"),
        ("", (0, 1, 2), "no identifiers"),
        (None, (0, 1, 2), "answer is NoneType"),
        ("[7] > [0]", (0, 1, 2), "no usable identifier"),
        ("Passage [3] is best; then 1 and 2", (2, 0, 1), "identifier(s) 1, 2 missing"),
    ],
)
def test_broken_answers_are_repaired_and_the_repair_is_said(
    answer: object, order: tuple[int, ...], repair: str
) -> None:
    parsed = parse_order(answer, 3)
    assert parsed.order == order
    assert parsed.repaired
    assert any(repair in line for line in parsed.repairs), parsed.repairs


@settings(max_examples=300, deadline=None)
@given(answer=st.text(max_size=80), count=st.integers(min_value=0, max_value=25))
def test_any_answer_gives_a_permutation(answer: str, count: int) -> None:
    parsed = parse_order(answer, count)
    assert sorted(parsed.order) == list(range(count))
    assert parse_order(answer, count) == parsed  # deterministic


# -- the sliding window ---------------------------------------------------------------------


def drive(window: SlidingWindow, answer: object) -> None:
    """Run every window, answering with ``answer(indices)`` -> text."""
    while (span := window.next_window()) is not None:
        indices = window.window_indices(span)
        window.apply(span, parse_order(answer(indices), len(indices)))  # type: ignore[operator]


def oracle(best_first: list[int]) -> object:
    place = {index: rank for rank, index in enumerate(best_first)}

    def answer(indices: list[int]) -> str:
        ordered = sorted(range(len(indices)), key=lambda position: place[indices[position]])
        return " > ".join(f"[{position + 1}]" for position in ordered)

    return answer


@pytest.mark.parametrize("count", [1, 2, 19, 20, 21, 45, 100])
def test_one_pass_puts_the_true_top_window_minus_step_first(count: int) -> None:
    truth = random.Random(count).sample(range(count), count)
    window = SlidingWindow(count)
    drive(window, oracle(truth))
    exact = min(count, 10)
    assert window.order[:exact] == truth[:exact]
    assert sorted(window.order) == list(range(count))
    assert window.calls == len(window_spans(count, 20, 10)) if count > 1 else window.calls == 0
    assert not window.repairs


@pytest.mark.parametrize("count", [21, 45, 100])
def test_enough_passes_reproduce_the_whole_permutation_and_stop_when_stable(count: int) -> None:
    truth = random.Random(count).sample(range(count), count)
    window = SlidingWindow(count, ListwiseOptions(passes=50))
    drive(window, oracle(truth))
    assert window.order == truth
    per_pass = len(window_spans(count, 20, 10))
    # Far fewer than 50 passes: the last one changed nothing, which ends the run.
    assert window.passes_run < 50
    assert window.calls == window.passes_run * per_pass


def test_ranks_are_a_valid_ranking_of_the_inputs() -> None:
    window = SlidingWindow(5, ListwiseOptions(window=3, step=1, passes=10))
    drive(window, oracle([4, 3, 2, 1, 0]))
    assert window.order == [4, 3, 2, 1, 0]
    assert Ranking(window.ranks()).ranks == (5, 4, 3, 2, 1)


def test_garbage_answers_never_lose_or_duplicate_and_every_repair_is_recorded() -> None:
    chooser = random.Random(7)
    truth = list(range(60))
    good = oracle(truth)
    garbage = ["[1] > [1] > [99]", "no idea", "[x] > [2]", None, "[3]"]
    sent_garbage = 0

    def answer(indices: list[int]) -> object:
        nonlocal sent_garbage
        if chooser.random() < 0.2:
            sent_garbage += 1
            return chooser.choice(garbage)
        return good(indices)  # type: ignore[operator]

    window = SlidingWindow(60, ListwiseOptions(passes=3))
    drive(window, answer)
    assert sorted(window.order) == truth
    assert len(window.repairs) == sent_garbage > 0
