r"""Haystack 2.x / 3.x adapter: ``CrossrankRanker``, a ranker component driven by crossrank.

It only translates Haystack ``Document``\ s to candidates and results back to scored copies.
Pipelines name it by its canonical path ``haystack_integrations.components.rankers.crossrank``,
inside Haystack 3's deserialization allowlist, so ``Pipeline.loads(pipeline.dumps())`` needs no
setup. No ``from __future__ import annotations``: Haystack reads ``run``'s annotations at class
creation to build the component's sockets.
"""

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from crossrank import ConfigurationError, CrossrankError, Reranker, RerankerConfig, RerankResult
from crossrank.errors import missing_dependency
from crossrank.integrations import _shared

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.core.errors import DeserializationError, SerializationError
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise missing_dependency("haystack-ai", "haystack") from exc

CANONICAL_MODULE = "haystack_integrations.components.rankers.crossrank"  # on the allowlist
_WARM_UP = threading.Lock()  # warm-up is rare: one lock for all keeps components picklable


@component
class CrossrankRanker:
    """Reranks retrieved documents with any crossrank backend.

    Give a ready ``reranker=``, a ``config=`` (:class:`crossrank.RerankerConfig` or its dict,
    e.g. the file ``crossrank tune-selective`` writes), or the reranker's keyword options;
    Haystack's ``top_k`` and ``score_threshold`` are accepted for ``top_n`` and ``threshold``
    (default ``top_k`` 10, as Haystack's rankers). API keys may be Haystack ``Secret``\\ s; only
    environment-variable secrets are serialized, as everywhere in Haystack. The backend is
    built and its model loaded in :meth:`warm_up`; a direct ``run`` warms up on its own.

    Returned documents are copies with ``score`` set; their ``meta`` records
    ``first_stage_score``, ``first_stage_rank``, ``rerank_raw_score``, ``rerank_status`` and,
    on fallback (the first-stage order, flagged), ``rerank_error``. The text read is the
    values of ``meta_fields_to_embed`` then ``content``, joined by ``embedding_separator``; a
    document without content is scored on those alone, never dropped.

    Example:
        >>> ranker = CrossrankRanker(backend="embedding", top_k=1)
        >>> docs = [Document(content="Oslo office"), Document(content="refunds take 5 days")]
        >>> ranker.run(query="refund time", documents=docs)["documents"][0].content
        'refunds take 5 days'
    """

    __module__ = CANONICAL_MODULE

    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        config: RerankerConfig | Mapping[str, Any] | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        **options: Any,
    ) -> None:
        fields = meta_fields_to_embed or []
        if isinstance(fields, str) or not all(isinstance(name, str) for name in fields):
            raise ConfigurationError(f"meta_fields_to_embed must list names: {fields!r}")
        if not isinstance(embedding_separator, str):
            raise ConfigurationError(f"embedding_separator must be text: {embedding_separator!r}")
        # Options are checked now; the backend (its model, its HTTP client) waits for warm_up.
        self.config, self._reranker = _shared.resolve_config(
            "haystack", reranker=reranker, config=config, options=options
        )
        self.meta_fields_to_embed = list(fields)
        self.embedding_separator = embedding_separator
        self._warm = False

    def warm_up(self) -> None:
        """Build the backend and load its model; a bad model path or missing key raises here."""
        with _WARM_UP:
            if self._warm:
                return
            if self._reranker is None:
                self._reranker = Reranker(config=self.config)
            load = getattr(self._reranker.backend, "load", None)
            if callable(load):
                load()
            self._warm = True

    async def warm_up_async(self) -> None:
        """Haystack 3 warms components up on the serving loop; keep the model load off it."""
        await asyncio.to_thread(self.warm_up)

    def close(self) -> None:
        """Release the backend's connections (Haystack 3 calls this when a pipeline closes)."""
        if self._reranker is not None:
            self._reranker.close()

    def to_dict(self) -> dict[str, Any]:
        """Init parameters for YAML: the credential-free config, API keys as env references."""
        literal_keys = _shared.token_secrets(self.config)
        if literal_keys or not self.config.serializable:
            raise SerializationError(
                f"CrossrankRanker cannot be saved: {literal_keys or 'a backend instance'} "
                "(token secrets and backend instances are never written: use "
                "Secret.from_env_var and a backend by name)"
            )
        return default_to_dict(  # type: ignore[no-any-return]
            self,
            config=self.config.to_dict(),
            meta_fields_to_embed=list(self.meta_fields_to_embed),
            embedding_separator=self.embedding_separator,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossrankRanker":
        """Rebuild from :meth:`to_dict` output."""
        try:
            ranker: CrossrankRanker = default_from_dict(cls, data)
        except CrossrankError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DeserializationError(f"cannot build CrossrankRanker: {exc}") from exc
        if _shared.token_secrets(ranker.config):  # a key written into the YAML itself
            raise DeserializationError("a saved pipeline must not hold a literal API key")
        return ranker

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Rerank ``documents`` (best first); ``top_k`` / ``score_threshold`` apply to this call."""
        candidates = self._candidates(documents)
        if not candidates:
            return {"documents": []}
        if not self._warm:
            self.warm_up()
        assert self._reranker is not None
        result = self._reranker.rerank(query, candidates, top_n=top_k, threshold=score_threshold)
        return {"documents": _ranked_documents(documents, result)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Async twin of :meth:`run`: the backend's async path keeps the event loop free."""
        candidates = self._candidates(documents)
        if not candidates:
            return {"documents": []}
        if not self._warm:
            await self.warm_up_async()
        assert self._reranker is not None
        result = await self._reranker.arerank(
            query, candidates, top_n=top_k, threshold=score_threshold
        )
        return {"documents": _ranked_documents(documents, result)}

    def _candidates(self, documents: Any) -> list[Any]:
        return [
            _shared.candidate(
                self._text_of(document),
                id=document.id,
                score=document.score,
                metadata=document.meta,
                position=position,
            )
            for position, document in enumerate(
                _shared.documents_of(documents, Document, "haystack")
            )
        ]

    def _text_of(self, document: Document) -> str:
        """Embedded meta values, then the content (type conversion, not a ranking decision)."""
        parts = [str(document.meta[name]) for name in self.meta_fields_to_embed
                 if document.meta.get(name) is not None]
        if document.content is not None:
            parts.append(document.content)
        return self.embedding_separator.join(parts)


def _ranked_documents(documents: list[Document], result: RerankResult) -> list[Document]:
    """Copies of the kept documents in final order, scored, with what happened in ``meta``."""
    ranked = []
    for item in result:
        original = documents[item.input_index]
        meta = {**original.meta, **_shared.result_metadata(item, result.report)}
        ranked.append(dataclasses.replace(original, meta=meta, score=item.score))
    return ranked


__all__ = ["CANONICAL_MODULE", "CrossrankRanker"]
