"""Dense first stage: exact cosine search over MiniLM embeddings of the whole corpus.

The encoder is the process-wide one from :func:`crossrank.backends.embedding.
shared_sentence_transformer`, so a dense first stage and an embedding reranker in the same
process load the weights once. Corpus embeddings can be cached on disk (``cache_path``)
because encoding a few thousand abstracts on a laptop CPU takes minutes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crossrank.backends.embedding import EMBEDDED_MODEL, shared_sentence_transformer
from crossrank.eval.bm25 import ScoredHit


def _fingerprint(model: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(model.encode("utf-8"))
    for text in texts:
        digest.update(b"\0")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:16]


class DenseIndex:
    """Normalized embeddings of ``texts``; search is one matrix-vector product."""

    def __init__(
        self,
        texts: Sequence[str],
        *,
        model: str = EMBEDDED_MODEL,
        device: str = "cpu",
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        self.model = model
        self.size = len(texts)
        self._encoder = shared_sentence_transformer(model, device=device)
        cache_file = None
        if cache_dir is not None:
            cache_file = Path(cache_dir) / f"dense-{_fingerprint(model, texts)}.npy"
        if cache_file is not None and cache_file.is_file():
            self._vectors = np.load(cache_file)
        else:
            self._vectors = self._encode(list(texts), batch_size, show_progress)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache_file, self._vectors)

    def _encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        vectors = self._encoder.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def search(self, query: str, *, k: int) -> list[ScoredHit]:
        """Top-``k`` documents by cosine similarity, best first."""
        if self.size == 0:
            return []
        query_vector = self._encode([query], 1, False)[0]
        similarities = self._vectors @ query_vector
        top = min(k, self.size)
        candidates = np.argpartition(-similarities, top - 1)[:top]
        ordered = candidates[np.argsort(-similarities[candidates], kind="stable")]
        return [ScoredHit(index=int(index), score=float(similarities[index])) for index in ordered]
