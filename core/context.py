"""Context assembly: after reranking, choose what reaches the LLM, and in what order.

Reranking gives the best passages first; the prompt has a token budget, passages often
repeat each other (chunk overlap, mirrored pages), and models read the ends of a long
context better than its middle. So: walk the reranked list best first, drop a passage that
nearly repeats one already chosen, keep what fits the budget, then order the chosen ones
by score or with the best at both ends ("lost in the middle").

The framework adapters offer the same thing in their own idiom (a LangChain document
transformer, a LlamaIndex postprocessor, a Haystack component); they pass their options to
:class:`ContextConfig`, declared here once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from crossrank.errors import ConfigurationError
from crossrank.types import RankedCandidate, RerankResult

Ordering = Literal["score", "lost_in_the_middle"]
ORDERINGS: tuple[str, ...] = ("score", "lost_in_the_middle")

_PIECES = re.compile(r"\w+|[^\w\s]")
_WORDS = re.compile(r"\w+")


def approximate_tokens(text: str) -> int:
    """Words and punctuation marks: close to what subword tokenizers count for prose.

    Pass ``count_tokens=tokenizer_counter(...)`` when the exact count of a model matters.
    """
    return len(_PIECES.findall(text))


def tokenizer_counter(tokenizer: Any) -> Callable[[str], int]:
    """A counter from any tokenizer with ``encode(text)`` (Hugging Face, tiktoken...)."""
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise ConfigurationError(
            f"a tokenizer needs an encode(text) method, got {type(tokenizer).__name__}"
        )

    def count(text: str) -> int:
        try:
            return len(encode(text, add_special_tokens=False))
        except TypeError:  # tokenizers without that keyword (tiktoken)
            return len(encode(text))

    return count


@dataclass(frozen=True, kw_only=True)
class ContextConfig:
    """How context is assembled; every option is checked when it is built.

    Example:
        >>> plan = assemble(["a b c", "a b c", "d e"], config=ContextConfig(token_budget=5))
        >>> plan.chosen, plan.near_duplicates
        ((0, 2), (1,))
    """

    #: Most tokens the chosen passages may add up to.
    token_budget: int
    #: ``"score"`` (best first) or ``"lost_in_the_middle"`` (best at both ends).
    order: str = "score"
    #: Jaccard similarity of word 3-shingles at or above which a passage counts as a repeat
    #: of a better one already chosen; 1.0 drops exact repeats only. One changed word in a
    #: 12-word sentence still scores about 0.67, so the default catches it.
    near_duplicate_threshold: float = 0.6
    #: Tokens counted for each passage on top of its text (separators, citations).
    tokens_per_passage: int = 0
    #: Counts a passage's tokens; words and punctuation by default.
    count_tokens: Callable[[str], int] = field(default=approximate_tokens, compare=False)

    def __post_init__(self) -> None:
        budget = self.token_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigurationError(f"token_budget must be a positive integer, got {budget!r}")
        if self.order not in ORDERINGS:
            raise ConfigurationError(f"order must be one of {ORDERINGS}, got {self.order!r}")
        threshold = self.near_duplicate_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0.0 < threshold <= 1.0
        ):
            raise ConfigurationError(
                f"near_duplicate_threshold must be in (0, 1], got {threshold!r}"
            )
        extra = self.tokens_per_passage
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
            raise ConfigurationError(f"tokens_per_passage must be an integer >= 0, got {extra!r}")
        if not callable(self.count_tokens):
            raise ConfigurationError("count_tokens must be a function of a text")

    def to_dict(self) -> dict[str, Any]:
        """The serializable options (a custom ``count_tokens`` is code and is not saved)."""
        return {
            "token_budget": self.token_budget,
            "order": self.order,
            "near_duplicate_threshold": self.near_duplicate_threshold,
            "tokens_per_passage": self.tokens_per_passage,
        }


@dataclass(frozen=True, slots=True)
class ContextPlan:
    """Which passages (by index into the best-first input) reach the LLM, in prompt order."""

    chosen: tuple[int, ...]
    tokens: int
    near_duplicates: tuple[int, ...]
    over_budget: tuple[int, ...]


def assemble(texts: Sequence[str], *, config: ContextConfig) -> ContextPlan:
    """Plan the context from passages given best first (a reranker's output order).

    A passage that does not fit is skipped and the walk goes on, so a short good passage
    can still use the room a long one could not.
    """
    chosen: list[int] = []
    shingles_chosen: list[set[tuple[str, ...]]] = []
    near_duplicates: list[int] = []
    over_budget: list[int] = []
    used = 0
    for index, text in enumerate(texts):
        shingles = _shingles(text)
        if any(
            _jaccard(shingles, other) >= config.near_duplicate_threshold
            for other in shingles_chosen
        ):
            near_duplicates.append(index)
            continue
        cost = config.count_tokens(text) + config.tokens_per_passage
        if used + cost > config.token_budget:
            over_budget.append(index)
            continue
        used += cost
        chosen.append(index)
        shingles_chosen.append(shingles)
    ordered = chosen if config.order == "score" else _best_at_both_ends(chosen)
    return ContextPlan(tuple(ordered), used, tuple(near_duplicates), tuple(over_budget))


def assemble_context(result: RerankResult, **options: Any) -> list[RankedCandidate]:
    """The reranked candidates that reach the LLM, in prompt order (options: ContextConfig)."""
    plan = assemble(result.texts, config=ContextConfig(**options))
    return [result[index] for index in plan.chosen]


def _best_at_both_ends(best_first: list[int]) -> list[int]:
    """1st first, 2nd last, 3rd second, 4th second to last...: the weakest in the middle."""
    front: list[int] = []
    back: list[int] = []
    for rank, index in enumerate(best_first):
        (front if rank % 2 == 0 else back).append(index)
    return front + back[::-1]


def _shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    if len(words) < size:
        return {tuple(words)}
    return {tuple(words[start : start + size]) for start in range(len(words) - size + 1)}


def _jaccard(left: set[tuple[str, ...]], right: set[tuple[str, ...]]) -> float:
    if not left and not right:
        return 1.0
    return len(left & right) / len(left | right)


__all__ = [
    "ContextConfig",
    "ContextPlan",
    "approximate_tokens",
    "assemble",
    "assemble_context",
    "tokenizer_counter",
]
