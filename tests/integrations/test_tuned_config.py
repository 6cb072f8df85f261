"""A configuration chosen by `crossrank tune-selective` (blend + selective policy) is a plain
Reranker config; it must load into all three adapters and survive each one's serialization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crossrank import Candidate, Reranker

QUERY = "refunds for digital downloads"
TEXTS = [
    "shipping to europe takes five to seven business days",
    "refunds for physical goods are issued within fourteen days",
    "refunds for digital downloads are possible before the file is opened",
    "the warranty covers manufacturing defects for two years",
    "digital gift cards cannot be refunded",
]
SCORES = [9.0, 8.5, 8.0, 3.0, 2.5]


@pytest.fixture
def tuned_config(tiny_cross_encoder_path: Path) -> dict[str, Any]:
    # The shape tune-selective writes: Reranker.to_config() of the chosen configuration.
    return Reranker(
        "cross-encoder",
        model=str(tiny_cross_encoder_path),
        blend="weighted:0.7",
        selective="margin:0.99",
        normalization="sigmoid",
        top_n=3,
    ).to_config()


def expected(config: dict[str, Any]) -> tuple[list[str], list[float]]:
    candidates = [
        Candidate(text, id=f"d{i}", first_stage_score=score)
        for i, (text, score) in enumerate(zip(TEXTS, SCORES, strict=True))
    ]
    result = Reranker.from_config(config).rerank(QUERY, candidates)
    assert result.report.status == "reranked" and result.report.blend == "weighted(w=0.7)"
    return [str(item.id) for item in result], result.scores


def test_langchain_round_trip(tuned_config: dict[str, Any]) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from crossrank.integrations.langchain import CrossrankCompressor

    compressor = CrossrankCompressor(config=tuned_config, top_n=3)
    again = CrossrankCompressor(**compressor.model_dump())
    documents = [
        Document(page_content=text, id=f"d{i}", metadata={"relevance_score": score})
        for i, (text, score) in enumerate(zip(TEXTS, SCORES, strict=True))
    ]
    output = again.compress_documents(documents, QUERY)
    ids, scores = expected(tuned_config)
    assert [doc.id for doc in output] == ids
    assert [doc.metadata["relevance_score"] for doc in output] == pytest.approx(scores)


def test_llama_index_round_trip(tuned_config: dict[str, Any]) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from crossrank.integrations.llama_index import CrossrankPostprocessor

    postprocessor = CrossrankPostprocessor(config=tuned_config, top_n=3)
    again = CrossrankPostprocessor.from_dict(postprocessor.to_dict())
    nodes = [
        NodeWithScore(node=TextNode(text=text, id_=f"d{i}"), score=score)
        for i, (text, score) in enumerate(zip(TEXTS, SCORES, strict=True))
    ]
    output = again.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    ids, scores = expected(tuned_config)
    assert [node.node.node_id for node in output] == ids
    assert [node.score for node in output] == pytest.approx(scores)


def test_haystack_round_trip(tuned_config: dict[str, Any]) -> None:
    pytest.importorskip("haystack")
    from haystack import Document, Pipeline

    from crossrank.integrations.haystack import CrossrankRanker

    pipeline = Pipeline()
    pipeline.add_component("ranker", CrossrankRanker(config=tuned_config))
    loaded = Pipeline.loads(pipeline.dumps())
    documents = [
        Document(content=text, id=f"d{i}", score=score)
        for i, (text, score) in enumerate(zip(TEXTS, SCORES, strict=True))
    ]
    output = loaded.run({"ranker": {"query": QUERY, "documents": documents}})["ranker"]
    ids, scores = expected(tuned_config)
    assert [doc.id for doc in output["documents"]] == ids
    assert [doc.score for doc in output["documents"]] == pytest.approx(scores)
