"""CrossrankPostprocessor in LlamaIndex's own objects: a VectorStoreIndex query engine.

Most tests use the deterministic keyword backend, whose order can be predicted; pipeline
tests retrieve with real MiniLM embeddings, and one path scores with the tiny cross-encoder.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from crossrank import BackendError, Candidate, ConfigurationError, Reranker
from crossrank.integrations.llama_index import CrossrankPostprocessor
from tests.integrations.corpus import PASSAGES, QUERY
from tests.support.backends import FailingBackend, KeywordBackend


def corpus_nodes() -> list[NodeWithScore]:
    """Retrieval output: nodes in first-stage order with decreasing scores."""
    return [
        NodeWithScore(
            node=TextNode(text=text, id_=doc_id, metadata={"section": "support"}),
            score=1.0 - index / 20,
        )
        for index, (doc_id, text) in enumerate(PASSAGES.items())
    ]


def engine_candidates(nodes: Sequence[NodeWithScore]) -> list[Candidate]:
    """What the postprocessor is expected to hand the engine, built independently."""
    return [
        Candidate(
            text=item.node.get_content(metadata_mode=MetadataMode.EMBED),
            id=item.node.node_id,
            first_stage_score=item.score,
        )
        for item in nodes
    ]


def keyword_postprocessor(**options: Any) -> CrossrankPostprocessor:
    return CrossrankPostprocessor(reranker=Reranker(KeywordBackend()), **options)


# -- the adapter reproduces the engine exactly -------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_same_order_and_scores_as_the_engine(asynchronous: bool) -> None:
    nodes = corpus_nodes()
    postprocessor = keyword_postprocessor(top_n=4)
    if asynchronous:
        reranked = await postprocessor.apostprocess_nodes(nodes, query_str=QUERY)
    else:
        reranked = postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))

    expected = Reranker(KeywordBackend()).rerank(QUERY, engine_candidates(nodes), top_n=4)
    assert [item.node.node_id for item in reranked] == expected.ids
    assert [item.score for item in reranked] == expected.scores
    assert [item.node.metadata["retrieval_score"] for item in reranked] == [
        nodes[ranked.input_index].score for ranked in expected
    ]
    assert reranked[0].node.node_id == "refund-digital"


async def test_async_path_uses_the_backends_async_scoring() -> None:
    class AsyncOnly(KeywordBackend):
        def score(self, query: str, texts: Sequence[str]) -> list[float]:
            raise AssertionError("_apostprocess_nodes must not call the blocking score()")

        async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
            return [-float(len(text)) for text in texts]  # shortest first

    postprocessor = CrossrankPostprocessor(reranker=Reranker(AsyncOnly()), top_n=None)
    reranked = await postprocessor.apostprocess_nodes(corpus_nodes(), query_str=QUERY)
    assert {item.node.metadata["rerank_status"] for item in reranked} == {"reranked"}
    # every EMBED text carries the same metadata prefix, so passage length decides
    assert [item.node.node_id for item in reranked] == sorted(
        PASSAGES, key=lambda doc_id: len(PASSAGES[doc_id])
    )
    assert (
        CrossrankPostprocessor._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes
    )


# -- inside a LlamaIndex query engine ---------------------------------------------------------


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding model over the real all-MiniLM-L6-v2 weights (no hub access)."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        from tests.support.embeddings import embed_texts

        return embed_texts(texts)


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    documents = [
        Document(text=text, id_=doc_id, metadata={"source": f"kb/{doc_id}.md"})
        for doc_id, text in PASSAGES.items()
    ]
    return VectorStoreIndex.from_documents(documents, embed_model=MiniLMEmbedding())


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_query_engine_source_nodes_are_reranked(
    index: VectorStoreIndex, asynchronous: bool
) -> None:
    postprocessor = keyword_postprocessor(top_n=3)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=8, node_postprocessors=[postprocessor]
    )
    response = await engine.aquery(QUERY) if asynchronous else engine.query(QUERY)

    retrieved = index.as_retriever(similarity_top_k=8).retrieve(QUERY)
    assert len(retrieved) == 8
    expected = Reranker(KeywordBackend()).rerank(QUERY, engine_candidates(retrieved), top_n=3)
    assert [item.node.node_id for item in response.source_nodes] == expected.ids
    assert [item.score for item in response.source_nodes] == expected.scores
    assert response.source_nodes[0].node.ref_doc_id == "refund-digital"
    for item in response.source_nodes:
        assert item.node.metadata["rerank_status"] == "reranked"
        assert isinstance(item.node.metadata["retrieval_score"], float)
    # the context the LLM saw is the reranked nodes, without crossrank's bookkeeping
    context = str(response)
    assert "rerank_status" not in context
    assert context.index(PASSAGES["refund-digital"]) < context.index(
        response.source_nodes[1].node.get_content()
    )


@pytest.mark.slow
def test_tiny_cross_encoder_scores_match_the_engine(tiny_cross_encoder_path: Path) -> None:
    nodes = corpus_nodes()
    postprocessor = CrossrankPostprocessor(
        backend="cross-encoder", model=str(tiny_cross_encoder_path), top_n=None
    )
    reranked = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    expected = Reranker("cross-encoder", model=str(tiny_cross_encoder_path)).rerank(
        QUERY, engine_candidates(nodes)
    )
    assert expected.report.status == "reranked"
    assert [item.node.node_id for item in reranked] == expected.ids
    assert [item.score for item in reranked] == pytest.approx(expected.scores, abs=1e-6)
    assert postprocessor.model_name == str(tiny_cross_encoder_path)


# -- instrumentation -------------------------------------------------------------------------


class _Collector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankTestCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def rerank_events() -> Iterator[list[BaseEvent]]:
    root = get_dispatcher()
    collector = _Collector(events=[])
    root.add_event_handler(collector)
    try:
        yield collector.events
    finally:
        root.event_handlers.remove(collector)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_emits_rerank_events_and_callbacks(
    rerank_events: list[BaseEvent], asynchronous: bool
) -> None:
    debug = LlamaDebugHandler()
    postprocessor = CrossrankPostprocessor(
        reranker=Reranker(KeywordBackend()), top_n=2, callback_manager=CallbackManager([debug])
    )
    nodes = corpus_nodes()
    if asynchronous:
        reranked = await postprocessor.apostprocess_nodes(nodes, query_str=QUERY)
    else:
        reranked = postprocessor.postprocess_nodes(nodes, query_str=QUERY)

    starts = [event for event in rerank_events if isinstance(event, ReRankStartEvent)]
    ends = [event for event in rerank_events if isinstance(event, ReRankEndEvent)]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0].model_name == "keyword-overlap"
    assert starts[0].top_n == 2
    assert starts[0].nodes == nodes
    assert ends[0].nodes == reranked

    (pair,) = debug.get_event_pairs(CBEventType.RERANKING)
    start_payload, end_payload = pair[0].payload, pair[1].payload
    assert start_payload is not None and end_payload is not None
    assert start_payload[EventPayload.QUERY_STR] == QUERY
    assert start_payload[EventPayload.MODEL_NAME] == "keyword-overlap"
    assert start_payload[EventPayload.TOP_K] == 2
    assert start_payload[EventPayload.NODES] == nodes
    assert end_payload[EventPayload.NODES] == reranked


# -- edge cases -----------------------------------------------------------------------------------


def test_missing_query_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="needs a query"):
        keyword_postprocessor().postprocess_nodes(corpus_nodes())


async def test_no_nodes_gives_an_empty_list(rerank_events: list[BaseEvent]) -> None:
    postprocessor = keyword_postprocessor()
    assert postprocessor.postprocess_nodes([], query_str=QUERY) == []
    assert await postprocessor.apostprocess_nodes([], query_str=QUERY) == []
    assert not [event for event in rerank_events if isinstance(event, ReRankStartEvent)]


def test_one_node() -> None:
    node = NodeWithScore(node=TextNode(text="refunds for digital downloads", id_="only"))
    (reranked,) = keyword_postprocessor().postprocess_nodes([node], query_str=QUERY)
    assert reranked.node.node_id == "only"
    assert reranked.score == pytest.approx(1.0)
    assert "retrieval_score" not in reranked.node.metadata  # it arrived without one
    assert node.score is None


def test_duplicate_nodes_are_dropped_by_the_engine() -> None:
    nodes = corpus_nodes()
    doubled = [*nodes[:3], nodes[1], nodes[0]]  # a fusion retriever can return a node twice
    reranked = keyword_postprocessor(top_n=None).postprocess_nodes(doubled, query_str=QUERY)
    assert sorted(item.node.node_id for item in reranked) == sorted(list(PASSAGES)[:3])


def test_nodes_with_empty_text_are_scored_not_lost() -> None:
    nodes = [
        NodeWithScore(node=TextNode(text="", id_="blank"), score=0.9),
        NodeWithScore(node=TextNode(text="refunds for digital downloads", id_="match"), score=0.1),
    ]
    reranked = keyword_postprocessor(top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    assert [item.node.node_id for item in reranked] == ["match", "blank"]


def test_nested_metadata_kept_and_callers_nodes_untouched() -> None:
    nodes = [
        NodeWithScore(
            node=TextNode(
                text=text,
                id_=doc_id,
                metadata={"origin": {"path": f"kb/{doc_id}.md", "tags": ["support"]}},
                excluded_llm_metadata_keys=["origin"],
            ),
            score=0.5,
        )
        for doc_id, text in PASSAGES.items()
    ]
    snapshot = copy.deepcopy(nodes)
    reranked = keyword_postprocessor(top_n=4).postprocess_nodes(nodes, query_str=QUERY)

    assert [item.model_dump() for item in nodes] == [item.model_dump() for item in snapshot]
    originals = {item.node.node_id: item for item in nodes}
    for item in reranked:
        original = originals[item.node.node_id]
        assert item is not original and item.node is not original.node
        assert item.node.metadata["origin"] == original.node.metadata["origin"]
        assert item.node.excluded_llm_metadata_keys == [
            "origin",
            "first_stage_rank",
            "rerank_raw_score",
            "rerank_status",
            "retrieval_score",
        ]
        assert "rerank_status" not in item.node.get_content(metadata_mode=MetadataMode.LLM)


def test_without_keep_retrieval_score_the_callers_nodes_are_reused_untouched() -> None:
    nodes = corpus_nodes()
    snapshot = copy.deepcopy(nodes)
    reranked = keyword_postprocessor(keep_retrieval_score=False).postprocess_nodes(
        nodes, query_str=QUERY
    )
    originals = {item.node.node_id: item for item in nodes}
    for item in reranked:
        assert item.node is originals[item.node.node_id].node
        assert item is not originals[item.node.node_id]
    assert [item.model_dump() for item in nodes] == [item.model_dump() for item in snapshot]


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_backend_failure_is_flagged_and_keeps_retrieval_order(asynchronous: bool) -> None:
    postprocessor = CrossrankPostprocessor(reranker=Reranker(FailingBackend()), top_n=3)
    nodes = corpus_nodes()
    if asynchronous:
        reranked = await postprocessor.apostprocess_nodes(nodes, query_str=QUERY)
    else:
        reranked = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    assert [item.node.node_id for item in reranked] == list(PASSAGES)[:3]
    for item in reranked:
        assert item.node.metadata["rerank_status"] == "fallback"
        assert "scoring exploded" in item.node.metadata["rerank_error"]


def test_strict_reranker_raises_instead_of_falling_back() -> None:
    postprocessor = CrossrankPostprocessor(reranker=Reranker(FailingBackend(), strict=True))
    with pytest.raises(BackendError, match="scoring exploded"):
        postprocessor.postprocess_nodes(corpus_nodes(), query_str=QUERY)


# -- construction and serialization ----------------------------------------------------------------


def test_default_top_n_follows_llama_index_convention() -> None:
    assert len(keyword_postprocessor().postprocess_nodes(corpus_nodes(), query_str=QUERY)) == 2
    assert CrossrankPostprocessor.class_name() == "CrossrankPostprocessor"


def test_conflicting_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="give only one of"):
        CrossrankPostprocessor(reranker=Reranker(KeywordBackend()), backend="embedding")
    with pytest.raises(ValueError, match="top_n must be >= 1, got -1"):
        keyword_postprocessor(top_n=-1)


def test_serialization_round_trips_without_secrets() -> None:
    secret = "sk-do-not-leak-4242"
    postprocessor = CrossrankPostprocessor(backend="jina", backend_options={"api_key": secret})
    for text in (str(postprocessor.to_dict()), postprocessor.to_json(), repr(postprocessor)):
        assert secret not in text

    local = CrossrankPostprocessor(backend="embedding", normalization="sigmoid", top_n=5)
    data = local.to_dict()
    assert data["class_name"] == "CrossrankPostprocessor"
    rebuilt = CrossrankPostprocessor.from_dict(data)
    assert rebuilt.to_dict() == data
    assert rebuilt.reranker.normalizer.name == "sigmoid"
    assert rebuilt.reranker.top_n == 5

    instance_backed = keyword_postprocessor()
    assert instance_backed.to_dict()["config"] is None
    assert instance_backed.to_json()
