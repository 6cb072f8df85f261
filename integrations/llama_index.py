"""LlamaIndex adapter: crossrank as a ``BaseNodePostprocessor``.

Pass it in ``node_postprocessors=[...]`` of a query engine, or call ``postprocess_nodes``
yourself. It only translates: ``NodeWithScore`` -> ``Candidate`` -> ``Reranker`` -> new
``NodeWithScore``; deduplication (by node id), ``top_n``, thresholds and normalization are the
engine's decisions.

The reranker reads each node's ``get_content(MetadataMode.EMBED)``, the text the embedding
model saw, so metadata a user chose to embed is also what the reranker judges.

Every returned ``NodeWithScore`` is new and carries crossrank's score in ``score``. With
``keep_retrieval_score=True`` (the default) its node is a copy (same ``node_id``, same
relationships; nested metadata values shared, never modified) whose metadata gains:

``retrieval_score``
    The score the node arrived with (LlamaIndex's own key for it), when it had one.
``rerank_status``
    What the engine did: ``"reranked"``, ``"skipped"`` (a selective policy trusted the
    retriever) or ``"fallback"`` (the backend failed; retrieval order was kept).
``rerank_error``
    Only on fallback: the backend's error message.

These keys are added to the copy's excluded embed/LLM metadata keys, so they never reach the
LLM prompt or change the text a later reranker reads. With ``keep_retrieval_score=False`` the
caller's node objects are reused as they are (never modified).

Like LlamaIndex's own rerankers it emits ``ReRankStartEvent``/``ReRankEndEvent`` on the
instrumentation dispatcher and a ``CBEventType.RERANKING`` callback event.

Requires ``llama-index-core`` (``pip install 'crossrank[llama-index]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from crossrank import Candidate, InvalidInputError, Reranker, RerankResult
from crossrank.errors import missing_dependency
from crossrank.integrations._options import config_of, resolve_reranker

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

#: LlamaIndex's rerankers (SentenceTransformerRerank, CohereRerank) keep two nodes by default.
DEFAULT_TOP_N = 2

RETRIEVAL_SCORE = "retrieval_score"
RERANK_STATUS = "rerank_status"
RERANK_ERROR = "rerank_error"


class CrossrankPostprocessor(BaseNodePostprocessor):
    """Reranks retrieved nodes with a crossrank :class:`~crossrank.Reranker`.

    Give either a ready ``reranker=`` or the keyword options of :class:`~crossrank.Reranker`
    (``backend``, ``model``, ``normalization``...) to build one; models are loaded once per
    process either way, so many postprocessors over one model cost one model in memory.

    ``top_n`` (default 2, LlamaIndex's convention) and ``threshold`` are passed to the engine
    on every call and override the reranker's own; ``top_n=None`` defers to the reranker.

    ``to_dict()`` holds ``reranker_config``, the reranker's secret-free
    :meth:`~crossrank.Reranker.to_config`, so ``from_dict`` rebuilds an equal postprocessor;
    it is ``None`` for rerankers built around a backend instance.
    """

    top_n: int | None = Field(default=DEFAULT_TOP_N, description="Nodes kept per query.")
    threshold: float | None = Field(
        default=None, description="Drop nodes whose normalized score is below this."
    )
    keep_retrieval_score: bool = Field(
        default=True,
        description="Copy nodes to record the retrieval score and rerank status in metadata.",
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
        keep_retrieval_score: bool = True,
        reranker_config: Mapping[str, Any] | None = None,
        callback_manager: Any = None,
        **reranker_options: Any,
    ) -> None:
        built = resolve_reranker(reranker, reranker_config, reranker_options)
        fields: dict[str, Any] = {
            "top_n": top_n,
            "threshold": threshold,
            "keep_retrieval_score": keep_retrieval_score,
            "reranker_config": config_of(built),
        }
        if callback_manager is not None:
            fields["callback_manager"] = callback_manager
        super().__init__(**fields)
        # Fail at construction, not at the first query, on a bad top_n or threshold: an empty
        # call runs the engine's own checks and nothing else.
        built.rerank("validate options", [], top_n=top_n, threshold=threshold)
        self._reranker = built

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
            result = self._reranker.rerank(
                query, _candidates(nodes), top_n=self.top_n, threshold=self.threshold
            )
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
            result = await self._reranker.arerank(
                query, _candidates(nodes), top_n=self.top_n, threshold=self.threshold
            )
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
                top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=self.model_name,
            )
        )

    def _callback_payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    # -- translation ------------------------------------------------------------------------

    def _nodes(self, nodes: list[NodeWithScore], result: RerankResult) -> list[NodeWithScore]:
        report = result.report
        annotations: dict[str, Any] = {RERANK_STATUS: report.status}
        if report.error is not None:
            annotations[RERANK_ERROR] = report.error
        reranked = []
        for item in result:
            original = nodes[item.input_index]
            node = original.node
            if self.keep_retrieval_score:
                added = dict(annotations)
                if original.score is not None:
                    added[RETRIEVAL_SCORE] = original.score
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
    candidates = []
    for position, node_with_score in enumerate(nodes):
        if not isinstance(node_with_score, NodeWithScore):
            raise InvalidInputError(
                f"node {position} must be a NodeWithScore, got {type(node_with_score).__name__}"
            )
        node = node_with_score.node
        candidates.append(
            Candidate(
                text=node.get_content(metadata_mode=MetadataMode.EMBED),
                id=node.node_id,
                first_stage_score=node_with_score.score,
                metadata=node.metadata,
            )
        )
    return candidates


def _with_keys(keys: list[str], added: Mapping[str, Any]) -> list[str]:
    return [*keys, *(key for key in added if key not in keys)]


__all__ = ["DEFAULT_TOP_N", "CrossrankPostprocessor"]
