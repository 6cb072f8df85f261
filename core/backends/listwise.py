"""Listwise reranking by sliding window, with no I/O: prompts, answers, window plans.

An LLM can order a handful of passages in one answer but not a hundred, so the candidate list
is ranked window by window from its end to its start (RankGPT's scheme): each window's best
passages move up into the next window, which is why the top ``window - step`` places of one
pass are exact for a consistent ranker. Further passes, when asked for, sort the rest; a pass
that changes nothing ends them early.

Everything here is deterministic and free of HTTP, so the parts that decide an order can be
tested exhaustively; :mod:`crossrank.backends.llm` only sends the prompts and reads the answers.

An answer is trusted for nothing: identifiers that are missing, repeated, out of range or not
numbers are repaired by a fixed rule (drop what cannot be used, keep the first mention, append
what is missing in the order the window had) and every repair is recorded, so no candidate is
ever lost, duplicated or silently misplaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossrank.errors import ConfigurationError

DEFAULT_WINDOW = 20
DEFAULT_STEP = 10
DEFAULT_PASSAGE_TOKENS = 300
DEFAULT_PASSES = 1

TokenSpans = Callable[[str], list[tuple[int, int]]]

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words, the stand-in tokenizer when none is given."""
    return [match.span() for match in _WORD.finditer(text)]


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListwiseOptions:
    """How the candidate list is cut into LLM calls.

    ``window`` passages per call, the window moving ``step`` places towards the top each time
    (``step < window``, so windows overlap and good passages can climb); ``passes`` times over
    the list at most; each passage cut to ``passage_tokens`` tokens.
    """

    window: int = DEFAULT_WINDOW
    step: int = DEFAULT_STEP
    passes: int = DEFAULT_PASSES
    passage_tokens: int = DEFAULT_PASSAGE_TOKENS

    def __post_init__(self) -> None:
        for name in ("window", "step", "passes", "passage_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if self.window < 2:
            raise ConfigurationError(f"window must be at least 2, got {self.window}")
        if self.step >= self.window:
            raise ConfigurationError(
                f"step must be smaller than window so windows overlap, got step={self.step} "
                f"with window={self.window}"
            )


# -- window plan -------------------------------------------------------------------------------


def window_spans(count: int, window: int, step: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each window of one pass, from the end of the list to its start."""
    if count <= 0:
        return []
    if count <= window:
        return [(0, count)]
    spans = []
    end = count
    while True:
        start = max(0, end - window)
        spans.append((start, end))
        if start == 0:
            return spans
        end -= step


# -- prompt ------------------------------------------------------------------------------------


def truncate_tokens(text: str, max_tokens: int, token_spans: TokenSpans = word_spans) -> str:
    """``text`` cut after its ``max_tokens``-th token (whitespace inside is kept)."""
    spans = token_spans(text)
    if len(spans) <= max_tokens:
        return text
    return text[: spans[max_tokens - 1][1]]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_messages(
    query: str,
    passages: Sequence[str],
    *,
    passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
    token_spans: TokenSpans = word_spans,
) -> list[dict[str, str]]:
    """The chat messages that ask for one window's order; passages are numbered from 1."""
    count = len(passages)
    numbered = "\n".join(
        f"[{number}] {_one_line(truncate_tokens(passage, passage_tokens, token_spans))}"
        for number, passage in enumerate(passages, start=1)
    )
    system = (
        "You order search results. Judge each passage only by how well it answers the "
        "query, and reply with identifiers alone."
    )
    user = (
        f"Query: {_one_line(query)}\n\n"
        f"Passages ({count}):\n{numbered}\n\n"
        f"Order all {count} passages from most to least relevant to the query. Reply with "
        f"every identifier exactly once, like [2] > [1] > [3], and nothing else."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -- answer ------------------------------------------------------------------------------------

_THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_INTEGER = re.compile(r"\d+")
_LIST_SEPARATORS = re.compile(r"[\s,;>]+")


@dataclass(frozen=True)
class ParsedOrder:
    """A window's order (0-based positions in the window, best first) and what was repaired."""

    order: tuple[int, ...]
    repairs: tuple[str, ...] = ()

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)


def parse_order(answer: Any, count: int) -> ParsedOrder:
    """The permutation an answer gives for a window of ``count`` passages, repaired if need be.

    Bracketed identifiers (``[3]``) are read when there are any, bare numbers otherwise, so a
    number quoted in prose does not count when the answer uses brackets. Unusable identifiers
    are dropped, a repeated one keeps its first place, and the missing ones follow in the order
    the window had them: the same answer always gives the same order.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    repairs: list[str] = []
    if not isinstance(answer, str):
        repairs.append(f"answer is {type(answer).__name__}, not text")
        answer = ""
    text = _THINKING.sub(" ", answer)
    bracketed = _BRACKETED.findall(text)
    tokens: list[str] = []
    if bracketed:
        for inside in bracketed:
            # "[3]" is one identifier; "[3, 1, 2]" (a JSON-style list) is several.
            parts = [part for part in _LIST_SEPARATORS.split(inside) if part]
            if parts and all(part.isdigit() for part in parts):
                tokens.extend(parts)
            else:
                tokens.append(inside)
    else:
        tokens = _INTEGER.findall(text)
    order: list[int] = []
    seen: set[int] = set()
    for token in tokens:
        if not token.isdigit():
            repairs.append(f"non-numeric identifier [{_excerpt(token)}] ignored")
            continue
        number = int(token)
        if not 1 <= number <= count:
            repairs.append(f"identifier {number} outside 1..{count} ignored")
            continue
        if number - 1 in seen:
            repairs.append(f"identifier {number} repeated; first place kept")
            continue
        seen.add(number - 1)
        order.append(number - 1)
    if count and not tokens:
        repairs.append(f"no identifiers in the answer {_excerpt(answer)!r}")
    missing = [position for position in range(count) if position not in seen]
    if missing and len(missing) < count:
        shown = ", ".join(str(position + 1) for position in missing)
        repairs.append(f"identifier(s) {shown} missing; appended in window order")
    elif missing and tokens:
        repairs.append("no usable identifier; window order kept")
    order.extend(missing)
    return ParsedOrder(tuple(order), tuple(repairs))


def _excerpt(text: str, limit: int = 60) -> str:
    flat = _one_line(text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- the sliding window, as a state machine ----------------------------------------------------


@dataclass(frozen=True)
class WindowRepair:
    """One window whose answer needed repair: where it was and what was done."""

    pass_number: int
    start: int
    end: int
    repairs: tuple[str, ...]


@dataclass
class SlidingWindow:
    """The running order of one query's candidates while windows are ranked one by one.

    ``next_window()`` says which candidates to send (or ``None`` when done); ``apply()`` takes
    the answer's parsed order. Sync and async callers drive the same object, so both follow
    exactly one sequence of windows.
    """

    count: int
    options: ListwiseOptions = field(default_factory=ListwiseOptions)
    #: Input indices, best first.
    order: list[int] = field(init=False)
    repairs: list[WindowRepair] = field(init=False, default_factory=list)
    calls: int = field(init=False, default=0)
    passes_run: int = field(init=False, default=0)
    _plan: list[tuple[int, int]] = field(init=False)
    _position: int = field(init=False, default=0)
    _changed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.order = list(range(self.count))
        # One passage needs no LLM to be ranked.
        self._plan = (
            window_spans(self.count, self.options.window, self.options.step)
            if self.count > 1
            else []
        )
        self.passes_run = 1 if self._plan else 0

    def next_window(self) -> tuple[int, int] | None:
        """The ``(start, end)`` slice of :attr:`order` to rank next, or ``None`` when done."""
        if self._position == len(self._plan):
            more_passes = self.passes_run < self.options.passes
            # A pass that moved nothing proves the list sorted for this ranker: stop.
            if not (more_passes and self._changed and len(self._plan) > 1):
                return None
            self.passes_run += 1
            self._position = 0
            self._changed = False
        return self._plan[self._position]

    def window_indices(self, span: tuple[int, int]) -> list[int]:
        start, end = span
        return self.order[start:end]

    def apply(self, span: tuple[int, int], parsed: ParsedOrder) -> None:
        """Put the window's candidates in the answer's order."""
        start, end = span
        current = self.order[start:end]
        if sorted(parsed.order) != list(range(len(current))):  # parse_order guarantees this
            raise ValueError("a parsed order must be a permutation of the window")
        reordered = [current[position] for position in parsed.order]
        if reordered != current:
            self._changed = True
        self.order[start:end] = reordered
        self.calls += 1
        if parsed.repairs:
            self.repairs.append(WindowRepair(self.passes_run, start, end, parsed.repairs))
        self._position += 1

    def ranks(self) -> tuple[int, ...]:
        """1-based rank of each input index, as a :class:`~crossrank.backends.base.Ranking`."""
        ranks = [0] * self.count
        for place, index in enumerate(self.order, start=1):
            ranks[index] = place
        return tuple(ranks)


__all__ = [
    "DEFAULT_PASSAGE_TOKENS",
    "DEFAULT_PASSES",
    "DEFAULT_STEP",
    "DEFAULT_WINDOW",
    "ListwiseOptions",
    "ParsedOrder",
    "SlidingWindow",
    "WindowRepair",
    "build_messages",
    "parse_order",
    "truncate_tokens",
    "window_spans",
    "word_spans",
]
