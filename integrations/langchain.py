"""LangChain adapter: crossrank as a ``BaseDocumentCompressor``.

Drop it into ``ContextualCompressionRetriever`` (langchain-classic) or call it inside an LCEL
chain. It only translates: ``Document`` -> ``Candidate`` -> ``Reranker`` -> new ``Document``;
deduplication, ``top_n``, thresholds and normalization are the engine's decisions.

What each returned document carries, on a *copy* of the caller's document (same class, same
``id``, every metadata key kept; nested metadata values are shared, never modified):

``relevance_score``
    crossrank's score for this document (normalized as the reranker is configured). This is
    the key LangChain's own rerankers write, so downstream code already knows where to look.
``first_stage_score``
    The score the document arrived with, read from the first of ``first_stage_score_keys``
    present in its metadata (by default ``relevance_score`` then ``score``: a retriever's or
    an earlier reranker's score). Written only when one was found; it is also what the
    engine falls back to (and blends with) when it cannot rerank.
``first_stage_rank``
    1-based position among the (deduplicated) documents handed in.
``rerank_status``
    What the engine did: ``"reranked"``, ``"skipped"`` (a selective policy trusted the first
    stage) or ``"fallback"`` (the backend failed; first-stage order was kept).
``rerank_error``
    Only on fallback: the backend's error message, so a silent degradation is visible.

Requires ``langchain-core`` only (``pip install 'crossrank[langchain]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

from crossrank import Candidate, ConfigurationError, InvalidInputError, Reranker, RerankResult
from crossrank.errors import missing_dependency
from crossrank.integrations._options import config_of, resolve_reranker

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("langchain-core", "langchain") from exc

#: LangChain compressors (Cohere, cross-encoder, FlashRank) keep three documents by default.
DEFAULT_TOP_N = 3
DEFAULT_FIRST_STAGE_SCORE_KEYS = ("relevance_score", "score")

RELEVANCE_SCORE = "relevance_score"
FIRST_STAGE_SCORE = "first_stage_score"
FIRST_STAGE_RANK = "first_stage_rank"
RERANK_STATUS = "rerank_status"
RERANK_ERROR = "rerank_error"


class CrossrankCompressor(BaseDocumentCompressor):
    """Reranks retrieved documents with a crossrank :class:`~crossrank.Reranker`.

    Give either a ready ``reranker=`` (shared across compressors, configured once) or the
    keyword options of :class:`~crossrank.Reranker` (``backend``, ``model``,
    ``normalization``...) to build one; models are loaded once per process either way.

    ``top_n`` (default 3, LangChain's convention) and ``threshold`` are passed to the engine
    on every call and override the reranker's own; ``top_n=None`` defers to the reranker's
    setting (which keeps everything unless it says otherwise).

    Serialization (``model_dump``) holds ``reranker_config``, the reranker's
    secret-free :meth:`~crossrank.Reranker.to_config`, so ``CrossrankCompressor(**dumped)``
    rebuilds an equal compressor; it is ``None`` for rerankers built around a backend
    instance, which cannot be described by name.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    top_n: int | None = Field(default=DEFAULT_TOP_N, description="Documents kept per call.")
    threshold: float | None = Field(
        default=None, description="Drop documents whose normalized score is below this."
    )
    first_stage_score_keys: tuple[str, ...] = Field(
        default=DEFAULT_FIRST_STAGE_SCORE_KEYS,
        description="Metadata keys read, in order, for the score a document arrived with.",
    )
    reranker_config: dict[str, Any] | None = Field(
        default=None, description="Secret-free config of the reranker (read-only)."
    )

    _reranker: Reranker = PrivateAttr()

    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        top_n: int | None = DEFAULT_TOP_N,
        threshold: float | None = None,
        first_stage_score_keys: Sequence[str] = DEFAULT_FIRST_STAGE_SCORE_KEYS,
        reranker_config: Mapping[str, Any] | None = None,
        **reranker_options: Any,
    ) -> None:
        built = resolve_reranker(reranker, reranker_config, reranker_options)
        if isinstance(first_stage_score_keys, str):
            raise ConfigurationError(
                "first_stage_score_keys must be a sequence of metadata keys, got the string "
                f"{first_stage_score_keys!r}"
            )
        fields: dict[str, Any] = {
            "top_n": top_n,
            "threshold": threshold,
            "first_stage_score_keys": tuple(first_stage_score_keys),
            "reranker_config": config_of(built),
        }
        super().__init__(**fields)
        # Fail at construction, not at the first query, on a bad top_n or threshold: an empty
        # call runs the engine's own checks and nothing else.
        built.rerank("validate options", [], top_n=top_n, threshold=threshold)
        self._reranker = built

    @property
    def reranker(self) -> Reranker:
        """The engine doing the work (shared models live in crossrank's registry)."""
        return self._reranker

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; returns new documents, best first."""
        candidates = self._candidates(documents)
        result = self._reranker.rerank(
            query, candidates, top_n=self.top_n, threshold=self.threshold
        )
        return self._documents(documents, candidates, result)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async twin of :meth:`compress_documents`: the backend scores without blocking."""
        candidates = self._candidates(documents)
        result = await self._reranker.arerank(
            query, candidates, top_n=self.top_n, threshold=self.threshold
        )
        return self._documents(documents, candidates, result)

    # -- translation ------------------------------------------------------------------------

    def _candidates(self, documents: Sequence[Document]) -> list[Candidate]:
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
            raise InvalidInputError(
                f"documents must be a sequence of Document, got {type(documents).__name__}"
            )
        candidates = []
        for position, document in enumerate(documents):
            if not isinstance(document, Document):
                raise InvalidInputError(
                    f"document {position} must be a langchain Document, got "
                    f"{type(document).__name__}"
                )
            candidates.append(
                Candidate(
                    text=document.page_content,
                    id=document.id,
                    first_stage_score=self._first_stage_score(document.metadata),
                    metadata=document.metadata,
                )
            )
        return candidates

    def _first_stage_score(self, metadata: Mapping[str, Any]) -> float | None:
        for key in self.first_stage_score_keys:
            value = metadata.get(key)
            # Only plain numbers count; a string or a NaN under "score" is not a ranking signal.
            if isinstance(value, Real) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    return number
        return None

    @staticmethod
    def _documents(
        documents: Sequence[Document], candidates: Sequence[Candidate], result: RerankResult
    ) -> list[Document]:
        report = result.report
        compressed = []
        for item in result:
            original = documents[item.input_index]
            metadata = dict(original.metadata)
            metadata[RELEVANCE_SCORE] = item.score
            first_stage = candidates[item.input_index].first_stage_score
            if first_stage is not None:
                metadata[FIRST_STAGE_SCORE] = first_stage
            metadata[FIRST_STAGE_RANK] = item.first_stage_rank
            metadata[RERANK_STATUS] = report.status
            if report.error is not None:
                metadata[RERANK_ERROR] = report.error
            compressed.append(original.model_copy(update={"metadata": metadata}))
        return compressed


__all__ = ["DEFAULT_TOP_N", "CrossrankCompressor"]
