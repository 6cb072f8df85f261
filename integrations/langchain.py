"""LangChain adapter: crossrank as a ``BaseDocumentCompressor``.

Drop it into ``ContextualCompressionRetriever`` (langchain-classic) or call it inside an LCEL
chain. It only translates: ``Document`` -> ``Candidate`` -> ``Reranker`` -> new ``Document``;
every ranking decision is the engine's.

Each returned document is a *copy* of the caller's (same class, same ``id``, every metadata key
kept; nested values shared, never modified). Its metadata gains ``relevance_score`` (the key
LangChain's own rerankers write, so downstream code knows where to look) and the keys every
crossrank adapter writes: ``first_stage_score`` (the score it arrived with, read from the
first of ``first_stage_score_keys`` present), ``first_stage_rank``, ``rerank_raw_score``,
``rerank_status`` and, on fallback, ``rerank_error``.

Requires ``langchain-core`` only (``pip install 'crossrank[langchain]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crossrank import ConfigurationError, Reranker, RerankerConfig, RerankResult
from crossrank.errors import missing_dependency
from crossrank.integrations import _shared

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("langchain-core", "langchain") from exc

DEFAULT_TOP_N = _shared.FRAMEWORK_TOP_N["langchain"]
DEFAULT_FIRST_STAGE_SCORE_KEYS = ("relevance_score", "score")
RELEVANCE_SCORE = "relevance_score"


class CrossrankCompressor(BaseDocumentCompressor):
    """Reranks retrieved documents with a crossrank :class:`~crossrank.Reranker`.

    Give a ready ``reranker=`` (shared, configured once), a ``config=``
    (:class:`~crossrank.RerankerConfig` or its dict), or the reranker's keyword options;
    ``top_n`` defaults to 3, LangChain's convention. ``model_dump()`` holds the
    credential-free ``config``, so ``CrossrankCompressor(**dumped)`` rebuilds it.

    Example:
        >>> compressor = CrossrankCompressor(backend="embedding", top_n=2)
        >>> docs = [Document("refunds take 5 days"), Document("our office is in Oslo")]
        >>> compressor.compress_documents(docs, "how long do refunds take")[0].page_content
        'refunds take 5 days'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: dict[str, Any] | None = Field(
        default=None, description="Credential-free RerankerConfig dict (read-only)."
    )
    _reranker: Reranker = PrivateAttr()
    first_stage_score_keys: tuple[str, ...] = Field(
        default=DEFAULT_FIRST_STAGE_SCORE_KEYS,
        description="Metadata keys read, in order, for the score a document arrived with.",
    )

    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        config: RerankerConfig | Mapping[str, Any] | None = None,
        first_stage_score_keys: Sequence[str] = DEFAULT_FIRST_STAGE_SCORE_KEYS,
        **options: Any,
    ) -> None:
        built = _shared.build_reranker(
            "langchain", reranker=reranker, config=config, options=options
        )
        if isinstance(first_stage_score_keys, str):
            raise ConfigurationError(
                "first_stage_score_keys must be a sequence of metadata keys, got the string "
                f"{first_stage_score_keys!r}"
            )
        fields: dict[str, Any] = {
            "config": _shared.saved_config(built),
            "first_stage_score_keys": tuple(first_stage_score_keys),
        }
        super().__init__(**fields)
        self._reranker = built

    @property
    def reranker(self) -> Reranker:
        """The engine doing the work (shared models live in crossrank's registry)."""
        return self._reranker

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; returns new documents, best first."""
        return self._documents(documents, self._reranker.rerank(query, self._candidates(documents)))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async twin of :meth:`compress_documents`: the backend scores without blocking."""
        result = await self._reranker.arerank(query, self._candidates(documents))
        return self._documents(documents, result)

    def _candidates(self, documents: Sequence[Document]) -> list[Any]:
        return [
            _shared.candidate(
                document.page_content,
                id=document.id,
                score=_shared.first_finite_number(document.metadata, self.first_stage_score_keys),
                metadata=document.metadata,
                position=position,
            )
            for position, document in enumerate(
                _shared.documents_of(documents, Document, "langchain")
            )
        ]

    @staticmethod
    def _documents(documents: Sequence[Document], result: RerankResult) -> list[Document]:
        compressed = []
        for item in result:
            original = documents[item.input_index]
            metadata = {
                **original.metadata,
                RELEVANCE_SCORE: item.score,
                **_shared.result_metadata(item, result.report),
            }
            compressed.append(original.model_copy(update={"metadata": metadata}))
        return compressed


__all__ = ["DEFAULT_TOP_N", "CrossrankCompressor"]
