r"""BM25 first stage on the bm25s library (k1=0.9, b=0.4, English stopwords, Snowball stemming).

The defaults are the strongest of the variants measured on the shared collections (see the
evaluation notes in benchmarks/eval_collections.py); ``stemmer=None`` and ``method`` let a
caller reproduce other BM25 flavours.

``preset="reference"`` is the plain BM25 that comes closest to the reference table in the
shared collections' README: every ``\w+`` run lowercased, the 33 Lucene English stopwords
removed, no stemming, and each query term counted once however often the query repeats it.
It reproduces that table's Recall@100 on adi exactly (a fingerprint of the token set) and
every nDCG@10 within 0.02; it is much weaker than the default, so it exists for sanity checks
against that table, never as the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from crossrank.errors import InvalidInputError, missing_dependency


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


BM25Preset = Literal["default", "reference"]
BM25_PRESETS: tuple[str, ...] = ("default", "reference")

# bm25s's default pattern drops one-character tokens; the reference keeps them.
_WORD_PATTERN = r"(?u)\b\w+\b"


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
        preset: BM25Preset = "default",
    ) -> None:
        if preset not in BM25_PRESETS:
            raise InvalidInputError(
                f"unknown BM25 preset {preset!r}; expected one of {BM25_PRESETS}"
            )
        try:
            import bm25s
        except ImportError as exc:
            raise missing_dependency("bm25s", "eval") from exc
        self._bm25s = bm25s
        self.preset = preset
        reference = preset == "reference"
        # The reference preset pins everything the reference table depends on.
        self._stem = None if reference else _stemmer(stemmer)
        self._stopwords = "en" if reference else stopwords
        self._pattern = _WORD_PATTERN if reference else None
        self._unique_query_terms = reference
        self.size = len(texts)
        self._retriever = bm25s.BM25(k1=k1, b=b, method="lucene" if reference else method)
        tokens = bm25s.tokenize(list(texts), **self._tokenize_options())
        self._retriever.index(tokens, show_progress=False)

    def _tokenize_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "stopwords": self._stopwords,
            "stemmer": self._stem,
            "show_progress": False,
        }
        if self._pattern is not None:
            options["token_pattern"] = self._pattern
        return options

    def search(self, query: str, *, k: int) -> list[ScoredHit]:
        """Top-``k`` hits, best first; documents sharing no term with the query are left out."""
        if self.size == 0:
            return []
        tokens = self._bm25s.tokenize([query], **self._tokenize_options())
        if not tokens.ids or not tokens.ids[0]:
            return []
        query_tokens: Any = tokens
        if self._unique_query_terms:
            # bm25s adds a repeated query term once per occurrence; the reference does not.
            words_by_id = {index: word for word, index in tokens.vocab.items()}
            words = list(dict.fromkeys(words_by_id[i] for i in tokens.ids[0]))
            known = [word for word in words if word in self._retriever.vocab_dict]
            if not known:
                return []
            query_tokens = [known]
        indices, scores = self._retriever.retrieve(
            query_tokens, k=min(k, self.size), show_progress=False, n_threads=1
        )
        return [
            ScoredHit(index=int(index), score=float(score))
            for index, score in zip(indices[0], scores[0], strict=True)
            if score > 0
        ]
