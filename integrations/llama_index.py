"""LlamaIndex adapter: crossrank as a ``BaseNodePostprocessor``.

Pass it in ``node_postprocessors=[...]`` of a query engine, or call ``postprocess_nodes``
yourself. It only translates: ``NodeWithScore`` -> ``Candidate`` -> ``Reranker`` -> new
``NodeWithScore``; every ranking decision is the engine's. The reranker reads each node's
``get_content(MetadataMode.EMBED)``, the text the embedding model saw.

Every returned ``NodeWithScore`` is new and carries crossrank's score in ``score``. With
``keep_retrieval_score=True`` (the default) its node is a copy (same ``node_id``, nested
metadata shared, never modified) whose metadata gains ``retrieval_score`` (LlamaIndex's own
key for the score it arrived with) and the keys every crossrank adapter writes
(``first_stage_rank``, ``rerank_raw_score``, ``rerank_status``, ``rerank_error`` on
fallback). They are added to the copy's excluded embed/LLM keys, so they never reach the
prompt. With ``keep_retrieval_score=False`` the caller's nodes are reused as they are.

Like LlamaIndex's own rerankers it emits ``ReRankStartEvent``/``ReRankEndEvent`` and a
``CBEventType.RERANKING`` callback event. Requires ``llama-index-core``
(``pip install 'crossrank[llama-index]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from crossrank import Candidate, Reranker, RerankerConfig, RerankResult
from crossrank.errors import missing_dependency
from crossrank.integrations import _shared

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("llama-index-core", "llama-index") from exc

dispatcher = get_dispatcher(__name__)

DEFAULT_TOP_N = _shared.FRAMEWORK_TOP_N["llama_index"]
RETRIEVAL_SCORE = "retrieval_score"


class CrossrankPostprocessor(BaseNodePostprocessor):
    """Reranks retrieved nodes with a crossrank :class:`~crossrank.Reranker`.

    Give a ready ``reranker=``, a ``config=`` (:class:`~crossrank.RerankerConfig` or its
    dict), or the reranker's keyword options; ``top_n`` defaults to 2, LlamaIndex's
    convention. Many postprocessors over one model cost one model in memory. ``to_dict()``
    holds the credential-free ``config``, so ``from_dict`` rebuilds it; pickling keeps the
    reranker (or refuses, naming why, when it holds a literal key).

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> post = CrossrankPostprocessor(backend="embedding", top_n=1)
        >>> texts = ("Oslo office", "refunds: 5 days")
        >>> nodes = [NodeWithScore(node=TextNode(text=text)) for text in texts]
        >>> post.postprocess_nodes(nodes, query_str="refund time")[0].node.get_content()
        'refunds: 5 days'
    """

    config: dict[str, Any] | None = Field(
        default=None, description="Credential-free RerankerConfig dict (read-only)."
    )
    keep_retrieval_score: bool = Field(
        default=True,
        description="Copy nodes to record the retrieval score and rerank status in metadata.",
    )

    _reranker: Reranker = PrivateAttr()

    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        config: RerankerConfig | Mapping[str, Any] | None = None,
        keep_retrieval_score: bool = True,
        callback_manager: Any = None,
        **options: Any,
    ) -> None:
        built = _shared.build_reranker(
            "llama_index", reranker=reranker, config=config, options=options
        )
        fields: dict[str, Any] = {
            "config": _shared.saved_config(built),
            "keep_retrieval_score": keep_retrieval_score,
        }
        if callback_manager is not None:
            fields["callback_manager"] = callback_manager
        super().__init__(**fields)
        self._reranker = built

    def __getstate__(self) -> dict[Any, Any]:
        # LlamaIndex's pickling drops private attributes; the reranker must travel with it.
        state = super().__getstate__()
        state["__crossrank_reranker__"] = self._reranker
        return state  # type: ignore[no-any-return]

    def __setstate__(self, state: dict[Any, Any]) -> None:
        reranker = state.pop("__crossrank_reranker__")
        super().__setstate__(state)
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankPostprocessor"

    @property
    def reranker(self) -> Reranker:
        """The engine doing the work (shared models live in crossrank's registry)."""
        return self._reranker

    @property
    def model_name(self) -> str:
        """What the rerank events report as the model."""
        backend = self._reranker.backend
        return backend.model_name or backend.name

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        if not nodes:
            return []
        with self._reranking_events(nodes, query_bundle, query) as finish:
            result = self._reranker.rerank(query, _candidates(nodes))
            return finish(result)

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        if not nodes:
            return []
        with self._reranking_events(nodes, query_bundle, query) as finish:
            result = await self._reranker.arerank(query, _candidates(nodes))
            return finish(result)

    # -- events -----------------------------------------------------------------------------

    @contextmanager
    def _reranking_events(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, query: str
    ) -> Iterator[Callable[[RerankResult], list[NodeWithScore]]]:
        """LlamaIndex's rerank events around one call, shared by the sync and async paths.

        Yields ``finish(result)``, which converts the result and closes both events.
        """
        self._start_event(nodes, query_bundle)
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._callback_payload(nodes, query)
        ) as event:

            def finish(result: RerankResult) -> list[NodeWithScore]:
                reranked = self._nodes(nodes, result)
                event.on_end(payload={EventPayload.NODES: reranked})
                dispatcher.event(ReRankEndEvent(nodes=reranked))
                return reranked

            yield finish

    def _start_event(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> None:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                # The event wants an int: "no limit" is reported as "all of them".
                top_n=self._reranker.top_n or len(nodes),
                model_name=self.model_name,
            )
        )

    def _callback_payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self._reranker.top_n,
        }

    # -- translation ------------------------------------------------------------------------

    def _nodes(self, nodes: list[NodeWithScore], result: RerankResult) -> list[NodeWithScore]:
        reranked = []
        for item in result:
            original = nodes[item.input_index]
            node = original.node
            if self.keep_retrieval_score:
                added = _shared.result_metadata(item, result.report)
                first_stage = added.pop(_shared.FIRST_STAGE_SCORE, None)
                if first_stage is not None:
                    added[RETRIEVAL_SCORE] = first_stage
                node = node.model_copy(
                    update={
                        "metadata": {**node.metadata, **added},
                        "excluded_embed_metadata_keys": _with_keys(
                            node.excluded_embed_metadata_keys, added
                        ),
                        "excluded_llm_metadata_keys": _with_keys(
                            node.excluded_llm_metadata_keys, added
                        ),
                    }
                )
            reranked.append(NodeWithScore(node=node, score=item.score))
        return reranked


def _query_of(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError(
            "CrossrankPostprocessor needs a query: pass query_bundle= or query_str= to "
            "postprocess_nodes"
        )
    return query_bundle.query_str


def _candidates(nodes: list[NodeWithScore]) -> list[Candidate]:
    return [
        _shared.candidate(
            scored.node.get_content(metadata_mode=MetadataMode.EMBED),
            id=scored.node.node_id,
            score=scored.score,
            metadata=scored.node.metadata,
            position=position,
        )
        for position, scored in enumerate(_shared.documents_of(nodes, NodeWithScore, "llama_index"))
    ]


def _with_keys(keys: list[str], added: Mapping[str, Any]) -> list[str]:
    return [*keys, *(key for key in added if key not in keys)]


__all__ = ["DEFAULT_TOP_N", "CrossrankPostprocessor"]
