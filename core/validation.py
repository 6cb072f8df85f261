"""Input checks shared by the engine and its options: fail early, name the bad value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

from crossrank.errors import InvalidInputError
from crossrank.types import Candidate


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_query(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidInputError(
            f"query must be a string, got {type(query).__name__}: {_short(query)}"
        )
    if not query.strip():
        raise InvalidInputError(f"query must not be empty or blank, got {query!r}")
    check_encodable(query, "query")
    return query


def check_encodable(text: str, what: str) -> None:
    """Refuse text that no model input can carry: a lone surrogate has no UTF-8 form.

    Refused rather than replaced, for every backend alike, so the caller learns that a text
    was damaged upstream (a bad decode, a cut emoji) instead of getting it scored as ``?``.
    """
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} holds a lone surrogate {text[exc.start]!r} at character {exc.start}; "
            "it cannot be encoded as UTF-8 (decode the source with errors='replace' to keep it)"
        ) from None


def check_top_n(top_n: Any) -> int | None:
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, int):
        raise InvalidInputError(f"top_n must be a positive integer or None, got {_short(top_n)}")
    if top_n < 1:
        raise InvalidInputError(f"top_n must be >= 1, got {top_n}")
    return top_n


def check_threshold(
    threshold: Any, bounds: tuple[float, float], normalization: str
) -> float | None:
    if threshold is None:
        return None
    if not is_real_number(threshold):
        raise InvalidInputError(f"threshold must be a number or None, got {_short(threshold)}")
    low, high = bounds
    if not math.isfinite(threshold) or not low <= threshold <= high:
        raise InvalidInputError(
            f"threshold {threshold!r} is outside [{low}, {high}], the range of "
            f"{normalization!r} scores"
        )
    return float(threshold)


def check_latency_budget(budget_ms: Any) -> float | None:
    if budget_ms is None:
        return None
    if not is_real_number(budget_ms) or not math.isfinite(budget_ms) or budget_ms <= 0:
        raise InvalidInputError(
            f"latency_budget_ms must be a positive number of milliseconds or None, got "
            f"{_short(budget_ms)}"
        )
    return float(budget_ms)


def to_candidates(items: Sequence[Any]) -> list[Candidate]:
    """Accept ``Candidate`` objects or plain strings; reject anything else by position."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidInputError(
            f"candidates must be a sequence of Candidate or str, got {type(items).__name__}"
        )
    candidates: list[Candidate] = []
    for position, item in enumerate(items):
        if isinstance(item, str):
            item = Candidate(text=item)
        elif not isinstance(item, Candidate):
            raise InvalidInputError(
                f"candidate {position} must be a Candidate or str, got {type(item).__name__}"
            )
        check_candidate(item, position)
        candidates.append(item)
    return candidates


def check_candidate(candidate: Candidate, position: int) -> None:
    if not isinstance(candidate.text, str):
        raise InvalidInputError(
            f"candidate {position} (id={candidate.id!r}) has no usable text: expected str, got "
            f"{type(candidate.text).__name__}: {_short(candidate.text)}"
        )
    check_encodable(candidate.text, f"candidate {position} (id={candidate.id!r})")
    if candidate.id is not None and not isinstance(candidate.id, str):
        raise InvalidInputError(
            f"candidate {position} id must be a string or None, got {_short(candidate.id)}"
        )
    score = candidate.first_stage_score
    if score is not None:
        if not is_real_number(score):
            raise InvalidInputError(
                f"candidate {position} (id={candidate.id!r}) first_stage_score must be a number, "
                f"got {_short(score)}"
            )
        if not math.isfinite(score):
            raise InvalidInputError(
                f"candidate {position} (id={candidate.id!r}) first_stage_score must be finite, "
                f"got {score!r}"
            )


def is_real_number(value: Any) -> bool:
    """Any real number type (NumPy scalars included, as retrievers often return), not bool."""
    return isinstance(value, Real) and not isinstance(value, bool)  # numpy.bool_ is no Real


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {tuple(choices)}, got {_short(value)}")
    return str(value)
