"""First stages used to mine hard negatives: BM25 always, a dense bi-encoder optionally.

Hard negatives should look like what the reranker will actually be shown at query time, so
they come from the same kind of first stage the reranker sits behind. BM25 negatives share
terms with the query (the mistakes a lexical first stage makes); dense negatives share
topic without sharing terms (the mistakes an embedding first stage makes).
"""

from __future__ import annotations

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
    """Cosine similarity of bi-encoder embeddings, on :class:`crossrank.eval.dense.DenseIndex`.

    The corpus is embedded once when the miner is built; on a CPU that takes about a minute
    per thousand abstracts, which is why dense mining is opt-in.
    """

    def __init__(self, collection: BeirCollection, *, device: str = "cpu") -> None:
        from crossrank.eval.dense import DenseIndex

        self.doc_ids: list[str] = list(collection.corpus)
        self.index = DenseIndex(
            [collection.corpus[doc_id].full_text for doc_id in self.doc_ids], device=device
        )

    def candidates(self, query: str, *, k: int) -> list[str]:
        return [self.doc_ids[hit.index] for hit in self.index.search(query, k=k)]
