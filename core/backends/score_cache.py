"""A thread-safe LRU store of (scorer identity, query, text) -> score, for ``CachedBackend``.

RAG traffic repeats itself (the same popular passages come back for similar questions, and
retries resend identical requests); a hit skips the forward pass entirely. Keys are SHA-256
digests of the query and text, so the cache never holds caller text, and they include the
scorer's identity, because a bf16 score is not an fp32 score. Each entry also keeps what
computing it cost per pair, so an evaluation that reuses scores can still report what a
configuration would have cost on its own. Bounded by entry count (or unbounded, for an
evaluation); a hit refreshes an entry, an insert past the bound evicts the least recently
used.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from crossrank.errors import ConfigurationError

Key = tuple[Hashable, bytes, bytes]


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class ScoreCache:
    """LRU of (score, cost in ms per pair) keyed by (scorer key, query digest, text digest)."""

    def __init__(self, max_entries: int | None) -> None:
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise ConfigurationError(
                f"score cache size must be a positive integer, got {max_entries!r}"
            )
        self.max_entries = max_entries
        self.entries: OrderedDict[Key, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def keys(self, scorer_key: Hashable, query: str, texts: Sequence[str]) -> list[Key]:
        query_digest = text_digest(query)
        return [(scorer_key, query_digest, text_digest(text)) for text in texts]

    def get(self, keys: Sequence[Key]) -> list[tuple[float, float] | None]:
        """(score, cost ms) or ``None`` per key; hits are refreshed and counted."""
        found: list[tuple[float, float] | None] = []
        with self._lock:
            for key in keys:
                entry = self.entries.get(key)
                if entry is None:
                    self.misses += 1
                else:
                    self.entries.move_to_end(key)
                    self.hits += 1
                found.append(entry)
        return found

    def lookup(
        self, scorer_key: Hashable, query: str, texts: Sequence[str]
    ) -> tuple[list[float | None], list[Key]]:
        """Cached score or ``None`` per text, plus the keys to ``store`` misses under."""
        keys = self.keys(scorer_key, query, texts)
        return [None if entry is None else entry[0] for entry in self.get(keys)], keys

    def store(self, keys: Sequence[Key], scores: Sequence[float], cost_ms: float = 0.0) -> None:
        """Remember scores; ``cost_ms`` is what computing each one took."""
        with self._lock:
            for key, score in zip(keys, scores, strict=True):
                self.entries[key] = (float(score), float(cost_ms))
                self.entries.move_to_end(key)
            if self.max_entries is not None:
                while len(self.entries) > self.max_entries:
                    self.entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.hits = 0
            self.misses = 0
