"""Deterministic in-process backends for engine and adapter tests.

They are real implementations of the Backend protocol (not mocks): the keyword backend
scores by query-term overlap, so tests can predict the order a reranker must produce.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence

from crossrank import BaseBackend

_WORD = re.compile(r"\w+")


def keyword_score(query: str, text: str) -> float:
    """Distinct query terms found in the text, with a tiny length penalty to break ties."""
    query_terms = set(_WORD.findall(query.lower()))
    text_terms = _WORD.findall(text.lower())
    overlap = len(query_terms.intersection(text_terms))
    return overlap - 0.001 * len(text_terms)


class KeywordBackend(BaseBackend):
    """Scores by query-term overlap; counts calls so tests can see what was scored."""

    name = "keyword"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return "keyword-overlap"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls.append((query, list(texts)))
        return [keyword_score(query, text) for text in texts]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        await asyncio.sleep(0)
        return self.score(query, texts)


class FailingBackend(BaseBackend):
    """Always raises, to exercise fallback and strict mode."""

    name = "failing"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or RuntimeError("scoring exploded")

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise self.error

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        raise self.error


class FixedScoresBackend(BaseBackend):
    """Returns whatever scores it was given (wrong counts and NaN included)."""

    name = "fixed"

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.scores)


class CharWindowBackend(KeywordBackend):
    """Keyword scoring plus a character-level 'tokenizer', to test windowing exactly."""

    name = "char-window"

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(match.start(), match.end()) for match in _WORD.finditer(text)]

    def window_token_budget(self, query: str) -> int | None:
        return self.budget


class OptionedKeywordBackend(BaseBackend):
    """Keyword scoring behind constructor options, to test configs by import path.

    Its options are named to trap name-based secret detection (``cache_key``,
    ``token_budget``, ``max_tokens_per_doc``) while the one real credential, ``api_key``,
    is declared in ``secret_options``. Holds no lock, so it pickles.
    """

    name = "optioned-keyword"
    secret_options = ("api_key",)

    def __init__(
        self,
        *,
        weight: float = 1.0,
        cache_key: str = "",
        token_budget: int | None = None,
        max_tokens_per_doc: int | None = None,
        api_key: object = None,
    ) -> None:
        self.weight = weight
        self.cache_key = cache_key
        self.token_budget = token_budget
        self.max_tokens_per_doc = max_tokens_per_doc
        self.api_key = api_key

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [self.weight * keyword_score(query, text) for text in texts]


#: Import path of :class:`OptionedKeywordBackend`, as a config names it.
OPTIONED_BACKEND = "tests.support.backends:OptionedKeywordBackend"
