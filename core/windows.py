"""Long texts -> overlapping token windows -> one score per text.

A cross-encoder silently truncates whatever does not fit its input, so the answer in the
second half of a long passage would never be read. Windows make every token visible to the
model; the window scores are then folded back into one score per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from crossrank.backends.base import TokenWindowing
from crossrank.errors import InvalidInputError

Aggregation = Literal["max", "first", "mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "first", "mean")


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """The texts actually sent to the backend and which candidate each belongs to."""

    window_texts: list[str]
    owners: list[int]
    candidate_count: int

    @property
    def windowed(self) -> bool:
        return len(self.window_texts) != self.candidate_count


def no_windows(texts: Sequence[str]) -> WindowPlan:
    return WindowPlan(list(texts), list(range(len(texts))), len(texts))


def plan_windows(
    query: str,
    texts: Sequence[str],
    windowing: TokenWindowing,
    *,
    stride: int,
) -> WindowPlan:
    """Split each text that does not fit beside ``query`` into windows sharing ``stride`` tokens.

    ``stride`` has the meaning it has in Hugging Face tokenizers: the number of tokens two
    consecutive windows have in common, capped at half a window.
    """
    budget = windowing.window_token_budget(query)
    if budget is None:
        return no_windows(texts)
    budget = max(budget, 1)
    # Windows advance by at least half their size, so a stride near the budget cannot turn
    # one passage into a window per token.
    step = max(budget - stride, (budget + 1) // 2)
    window_texts: list[str] = []
    owners: list[int] = []
    for owner, text in enumerate(texts):
        # A token spans at least one character, so short texts cannot overflow: skip the
        # tokenizer for them, which keeps windowing nearly free on ordinary passages.
        if len(text) <= budget:
            window_texts.append(text)
            owners.append(owner)
            continue
        spans = windowing.token_spans(text)
        if len(spans) <= budget:
            window_texts.append(text)
            owners.append(owner)
            continue
        start = 0
        while True:
            end = min(start + budget, len(spans))
            window_texts.append(text[spans[start][0] : spans[end - 1][1]])
            owners.append(owner)
            if end == len(spans):
                break
            start += step
    return WindowPlan(window_texts, owners, len(texts))


def aggregate(plan: WindowPlan, window_scores: Sequence[float], how: Aggregation) -> list[float]:
    """Fold window scores back into one score per candidate, in candidate order."""
    if not plan.windowed:
        return [float(score) for score in window_scores]
    per_owner: list[list[float]] = [[] for _ in range(plan.candidate_count)]
    for owner, score in zip(plan.owners, window_scores, strict=True):
        per_owner[owner].append(float(score))
    if how == "max":
        return [max(scores) for scores in per_owner]
    if how == "first":
        return [scores[0] for scores in per_owner]
    if how == "mean":
        return [float(np.mean(scores)) for scores in per_owner]
    raise InvalidInputError(f"unknown window aggregation {how!r}; expected one of {AGGREGATIONS}")
