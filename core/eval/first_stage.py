"""First stages for evaluation: BM25, dense, and their hybrid (RRF) over one collection.

Each returns :class:`crossrank.Candidate` lists ready for the reranker; the hybrid's
candidates carry per-list ranks (see :mod:`crossrank.fusion`) for the agreement policy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from crossrank.errors import InvalidInputError
from crossrank.eval.beir import BeirCollection
from crossrank.eval.bm25 import BM25Preset, ScoredHit
from crossrank.fusion import reciprocal_rank_fusion
from crossrank.types import Candidate

FIRST_STAGES = ("bm25", "dense", "hybrid")


class FirstStage:
    """Retrieves ``Candidate``s for a query from one collection with one method."""

    def __init__(
        self,
        collection: BeirCollection,
        method: str,
        *,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
        bm25_preset: BM25Preset = "default",
    ) -> None:
        if method not in FIRST_STAGES:
            raise InvalidInputError(
                f"unknown first stage {method!r}; expected one of {FIRST_STAGES}"
            )
        self.method = method
        self.doc_ids = list(collection.corpus)
        self.texts = [document.full_text for document in collection.corpus.values()]
        self._searchers: dict[str, Callable[[str, int], list[ScoredHit]]] = {}
        if method in ("bm25", "hybrid"):
            from crossrank.eval.bm25 import BM25Index

            bm25 = BM25Index(self.texts, preset=bm25_preset)
            self._searchers["bm25"] = lambda query, k: bm25.search(query, k=k)
        if method in ("dense", "hybrid"):
            from crossrank.eval.dense import DenseIndex

            dense = DenseIndex(self.texts, cache_dir=cache_dir, show_progress=show_progress)
            self._searchers["dense"] = lambda query, k: dense.search(query, k=k)

    def _candidates(self, hits: list[ScoredHit]) -> list[Candidate]:
        return [
            Candidate(
                text=self.texts[hit.index],
                id=self.doc_ids[hit.index],
                first_stage_score=hit.score,
            )
            for hit in hits
        ]

    def retrieve(self, query: str, *, k: int) -> list[Candidate]:
        """The top ``k`` candidates, best first."""
        if self.method != "hybrid":
            return self._candidates(self._searchers[self.method](query, k))
        lists = {
            name: self._candidates(search(query, k)) for name, search in self._searchers.items()
        }
        return reciprocal_rank_fusion(lists, limit=k)
