"""LangChain: context assembly as a ``BaseDocumentTransformer``.

Put it after :class:`~crossrank.integrations.langchain.CrossrankCompressor` (for example in a
``DocumentCompressorPipeline``) so the reranked documents are trimmed to a token budget,
near-duplicates dropped and ordered for the prompt. Options are
:class:`crossrank.context.ContextConfig`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossrank.context import ContextConfig, assemble
from crossrank.errors import missing_dependency

try:
    from langchain_core.documents import BaseDocumentTransformer, Document
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("langchain-core", "langchain") from exc


class CrossrankContextAssembler(BaseDocumentTransformer):
    """Keeps the best documents that fit ``token_budget``, repeats dropped, prompt-ordered.

    Documents are read best first (the order a reranker returns). The documents returned are
    the caller's own objects, unchanged.

    Example:
        >>> assembler = CrossrankContextAssembler(token_budget=8)
        >>> docs = [Document("refunds take five days"), Document("refunds take five days")]
        >>> [d.page_content for d in assembler.transform_documents(docs)]
        ['refunds take five days']
    """

    def __init__(self, **options: Any) -> None:
        self.config = ContextConfig(**options)

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> list[Document]:
        plan = assemble([document.page_content for document in documents], config=self.config)
        return [documents[index] for index in plan.chosen]

    async def atransform_documents(
        self, documents: Sequence[Document], **kwargs: Any
    ) -> list[Document]:
        return self.transform_documents(documents)


__all__ = ["CrossrankContextAssembler"]
