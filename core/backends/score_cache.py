"""A bounded LRU cache of (model variant, query, text) -> score, off by default.

RAG traffic repeats itself (the same popular passages come back for similar questions, and
retries resend identical requests); a hit skips the forward pass entirely. Keys are SHA-256
digests of the query and text, so the cache never holds caller text, and they include the
model variant, because a bf16 score is not an fp32 score. Bounded by entry count; a hit
refreshes an entry, an insert past the bound evicts the least recently used.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from crossrank.errors import ConfigurationError


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class ScoreCache:
    """Thread-safe LRU of scores keyed by (model key, query digest, text digest)."""

    def __init__(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(
                f"score cache size must be a positive integer, got {max_entries!r}"
            )
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Hashable, bytes, bytes], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, model_key: Hashable, query: str, texts: Sequence[str]
    ) -> tuple[list[float | None], list[tuple[Hashable, bytes, bytes]]]:
        """Cached score or ``None`` per text, plus the keys to ``store`` misses under."""
        query_digest = text_digest(query)
        keys = [(model_key, query_digest, text_digest(text)) for text in texts]
        found: list[float | None] = []
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is None:
                    self.misses += 1
                else:
                    self._entries.move_to_end(key)
                    self.hits += 1
                found.append(value)
        return found, keys

    def store(self, keys: Sequence[tuple[Hashable, bytes, bytes]], scores: Sequence[float]) -> None:
        with self._lock:
            for key, score in zip(keys, scores, strict=True):
                self._entries[key] = float(score)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = 0
            self.misses = 0
