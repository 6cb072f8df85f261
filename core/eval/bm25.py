"""BM25 first stage on the bm25s library (k1=0.9, b=0.4, English stopwords, Snowball stemming).

The defaults are the strongest of the variants measured on the shared collections (see the
evaluation notes in benchmarks/eval_collections.py); ``stemmer=None`` and ``method`` let a
caller reproduce other BM25 flavours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crossrank.errors import missing_dependency


@dataclass(frozen=True)
class ScoredHit:
    """One first-stage hit: a position in the indexed texts and its score."""

    index: int
    score: float


def _stemmer(language: str | None) -> Any:
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer(language)


class BM25Index:
    """An in-memory BM25 index over a list of texts."""

    def __init__(
        self,
        texts: Sequence[str],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        method: str = "lucene",
    ) -> None:
        try:
            import bm25s
        except ImportError as exc:
            raise missing_dependency("bm25s", "eval") from exc
        self._bm25s = bm25s
        self._stem = _stemmer(stemmer)
        self._stopwords = stopwords
        self.size = len(texts)
        self._retriever = bm25s.BM25(k1=k1, b=b, method=method)
        tokens = bm25s.tokenize(
            list(texts), stopwords=self._stopwords, stemmer=self._stem, show_progress=False
        )
        self._retriever.index(tokens, show_progress=False)

    def search(self, query: str, *, k: int) -> list[ScoredHit]:
        """Top-``k`` hits, best first; documents sharing no term with the query are left out."""
        if self.size == 0:
            return []
        tokens = self._bm25s.tokenize(
            [query], stopwords=self._stopwords, stemmer=self._stem, show_progress=False
        )
        if not tokens.ids or not tokens.ids[0]:
            return []
        indices, scores = self._retriever.retrieve(
            tokens, k=min(k, self.size), show_progress=False, n_threads=1
        )
        return [
            ScoredHit(index=int(index), score=float(score))
            for index, score in zip(indices[0], scores[0], strict=True)
            if score > 0
        ]
