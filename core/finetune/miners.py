"""First stages used to mine hard negatives: BM25 always, a dense bi-encoder optionally.

Hard negatives should look like what the reranker will actually be shown at query time, so
they come from the same kind of first stage the reranker sits behind. BM25 negatives share
terms with the query (the mistakes a lexical first stage makes); dense negatives share
topic without sharing terms (the mistakes an embedding first stage makes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crossrank.eval.beir import BeirCollection
from crossrank.eval.bm25 import BM25Index


class BM25Miner:
    """BM25 over a collection's title+text; also the first stage the held-out eval reranks."""

    def __init__(self, collection: BeirCollection) -> None:
        self.doc_ids: list[str] = list(collection.corpus)
        self.index = BM25Index([collection.corpus[doc_id].full_text for doc_id in self.doc_ids])

    def search(self, query: str, *, k: int) -> list[tuple[str, float]]:
        """(doc id, BM25 score) pairs, best first."""
        return [(self.doc_ids[hit.index], hit.score) for hit in self.index.search(query, k=k)]

    def candidates(self, query: str, *, k: int) -> list[str]:
        return [doc_id for doc_id, _score in self.search(query, k=k)]


class DenseMiner:
    """Cosine similarity of bi-encoder embeddings (the bundled MiniLM unless told otherwise).

    The corpus is embedded once when the miner is built; on a CPU that takes about a minute
    per thousand abstracts, which is why dense mining is opt-in.
    """

    def __init__(
        self,
        collection: BeirCollection,
        *,
        model: str = "embedded:all-MiniLM-L6-v2",
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        from crossrank.backends.embedding import shared_sentence_transformer

        self._encoder: Any = shared_sentence_transformer(model, device=device)
        self._batch_size = batch_size
        self.doc_ids: list[str] = list(collection.corpus)
        self._matrix = self._encode(
            [collection.corpus[doc_id].full_text for doc_id in self.doc_ids]
        )

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._encoder.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def candidates(self, query: str, *, k: int) -> list[str]:
        if not self.doc_ids:
            return []
        similarities = self._matrix @ self._encode([query])[0]
        top = np.argsort(-similarities, kind="stable")[:k]
        return [self.doc_ids[int(position)] for position in top]
