"""Hypothesis strategies shared by the hardening tests: hostile text, candidates, metadata.

Text draws from every Unicode class hypothesis knows plus a pool of characters that break
naive code (combining marks, right-to-left overrides, emoji with modifiers and joiners,
zero-width characters, NUL, byte-order marks); metadata holds values of every type a
framework might carry, so "metadata intact" is checked on more than strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from crossrank import Candidate

#: Characters that have broken tokenizers, regexes and terminals before.
TRICKY_CHARACTERS = (
    "\u0301",  # combining acute accent
    "e\u0301",  # decomposed é
    "\u05d0\u05d1\u05d2",  # Hebrew (right-to-left)
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # Arabic
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte-order mark
    "\x00",  # NUL
    "\U0001f44d\U0001f3fd",  # thumbs up, skin tone modifier
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji joined with ZWJ
    "\U0001f1e9\U0001f1ea",  # flag (regional indicators)
    "\u4e2d\u6587",  # CJK
    "\t\r\n",
    "\u2028",  # line separator
    "\U00010348",  # outside the basic plane
)

#: Words the keyword backend can match, so rankings are not all ties.
WORDS = ("refund", "shipping", "berlin", "capital", "password", "reset", "warranty", "paris")

tricky_text = st.lists(
    st.one_of(
        st.sampled_from(TRICKY_CHARACTERS),
        st.sampled_from(WORDS),
        st.text(max_size=8),  # every Unicode category hypothesis draws (surrogates excluded)
        st.just(" "),
    ),
    max_size=12,
).map("".join)

query_text = st.builds(lambda word, rest: f"{word} {rest}", st.sampled_from(WORDS), tricky_text)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)

#: Metadata values of every shape a framework might attach (non-string keys included).
metadata_values = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=8), st.tuples(st.integers(), st.text(max_size=3))),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), children, max_size=3),
    ),
    max_leaves=8,
)
metadata = st.dictionaries(
    st.one_of(st.text(max_size=6), st.integers()), metadata_values, max_size=4
)

finite_scores = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def candidate_lists(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 25,
    with_scores: bool | None = None,
) -> list[Candidate]:
    """Candidates with hostile text, a small id pool (so ids repeat with other texts),
    repeated texts, optional first-stage scores and arbitrary metadata."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    texts = draw(st.lists(tricky_text, min_size=1, max_size=max(size, 1)))
    scored = draw(st.booleans()) if with_scores is None else with_scores
    candidates = []
    for _ in range(size):
        text = draw(st.sampled_from(texts))  # repeats are likely: text deduplication runs
        identifier = draw(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é", "\x00"])))
        score = draw(finite_scores) if scored else None
        candidates.append(
            Candidate(text=text, id=identifier, first_stage_score=score, metadata=draw(metadata))
        )
    return candidates


def dedup_key(candidate: Candidate) -> tuple[str, str]:
    """The engine's documented deduplication key: the id, else the text."""
    if candidate.id is not None:
        return ("id", candidate.id)
    return ("text", candidate.text)


def first_occurrences(candidates: Sequence[Candidate]) -> list[int]:
    """Input positions that survive deduplication (first occurrence of each key wins)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for index, candidate in enumerate(candidates):
        key = dedup_key(candidate)
        if key not in seen:
            seen.add(key)
            kept.append(index)
    return kept


def snapshot(value: Any) -> str:
    """A deep, NaN-safe picture of a value, to prove nothing modified it."""
    return repr(value)


def is_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)
