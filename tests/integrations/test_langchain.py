"""CrossrankCompressor in LangChain's own objects: compression retriever, LCEL chains.

Most tests use the deterministic keyword backend, whose order can be predicted; pipeline
tests retrieve with real MiniLM embeddings, and one path scores with the tiny cross-encoder.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from crossrank import (
    BackendError,
    Candidate,
    ConfigurationError,
    InvalidInputError,
    Reranker,
)
from crossrank.integrations.langchain import CrossrankCompressor
from tests.integrations.corpus import PASSAGES, QUERY
from tests.support.backends import FailingBackend, KeywordBackend


def corpus_documents() -> list[Document]:
    return [
        Document(page_content=text, id=doc_id, metadata={"source": f"kb/{doc_id}.md"})
        for doc_id, text in PASSAGES.items()
    ]


def engine_candidates(documents: Sequence[Document], score_key: str | None) -> list[Candidate]:
    """What the compressor is expected to hand the engine, built independently."""
    return [
        Candidate(
            text=document.page_content,
            id=document.id,
            first_stage_score=document.metadata.get(score_key) if score_key else None,
        )
        for document in documents
    ]


def keyword_compressor(**options: Any) -> CrossrankCompressor:
    return CrossrankCompressor(reranker=Reranker(KeywordBackend()), **options)


# -- the adapter reproduces the engine exactly -------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_same_order_and_scores_as_the_engine(asynchronous: bool) -> None:
    documents = [
        document.model_copy(update={"metadata": {**document.metadata, "score": 1.0 / (i + 1)}})
        for i, document in enumerate(corpus_documents())
    ]
    compressor = keyword_compressor(top_n=5)
    if asynchronous:
        compressed = await compressor.acompress_documents(documents, QUERY)
    else:
        compressed = compressor.compress_documents(documents, QUERY)

    expected = Reranker(KeywordBackend()).rerank(
        QUERY, engine_candidates(documents, "score"), top_n=5
    )
    assert [document.id for document in compressed] == expected.ids
    assert [document.metadata["relevance_score"] for document in compressed] == expected.scores
    assert [document.metadata["first_stage_score"] for document in compressed] == [
        documents[item.input_index].metadata["score"] for item in expected
    ]
    assert [document.metadata["first_stage_rank"] for document in compressed] == [
        item.first_stage_rank for item in expected
    ]
    assert compressed[0].id == "refund-digital"
    assert {document.metadata["rerank_status"] for document in compressed} == {"reranked"}


async def test_async_path_uses_the_backends_async_scoring() -> None:
    class AsyncOnly(KeywordBackend):
        def score(self, query: str, texts: Sequence[str]) -> list[float]:
            raise AssertionError("acompress_documents must not call the blocking score()")

        async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
            return [-float(len(text)) for text in texts]  # shortest first

    compressor = CrossrankCompressor(reranker=Reranker(AsyncOnly()), top_n=None)
    compressed = await compressor.acompress_documents(corpus_documents(), QUERY)
    assert {document.metadata["rerank_status"] for document in compressed} == {"reranked"}
    assert [document.id for document in compressed] == sorted(
        PASSAGES, key=lambda doc_id: len(PASSAGES[doc_id])
    )
    assert CrossrankCompressor.acompress_documents is not BaseDocumentCompressor.acompress_documents
    assert "callbacks" in inspect.signature(CrossrankCompressor.acompress_documents).parameters
    assert "callbacks" in inspect.signature(CrossrankCompressor.compress_documents).parameters


# -- inside LangChain's pipeline objects --------------------------------------------------------


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over the real all-MiniLM-L6-v2 weights (no hub access)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from tests.support.embeddings import embed_texts

        return embed_texts(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture(scope="module")
def vector_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents(corpus_documents())
    return store


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_contextual_compression_retriever(
    vector_store: InMemoryVectorStore, asynchronous: bool
) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base_retriever = vector_store.as_retriever(search_kwargs={"k": 8})
    retriever = ContextualCompressionRetriever(
        base_compressor=keyword_compressor(top_n=3), base_retriever=base_retriever
    )
    if asynchronous:
        compressed = await retriever.ainvoke(QUERY)
    else:
        compressed = retriever.invoke(QUERY)

    first_stage = base_retriever.invoke(QUERY)
    assert len(first_stage) == 8
    expected = Reranker(KeywordBackend()).rerank(
        QUERY, engine_candidates(first_stage, None), top_n=3
    )
    assert [document.id for document in compressed] == expected.ids
    assert [document.metadata["relevance_score"] for document in compressed] == expected.scores
    for document in compressed:
        original = PASSAGES[document.id]  # type: ignore[index]
        assert document.page_content == original
        assert document.metadata["source"] == f"kb/{document.id}.md"


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_lcel_chain_builds_the_answer_context(
    vector_store: InMemoryVectorStore, asynchronous: bool
) -> None:
    compressor = keyword_compressor(top_n=2)

    def retrieve_with_scores(query: str) -> list[Document]:
        # A first stage that records its similarity under "score", as many retrievers do.
        return [
            document.model_copy(update={"metadata": {**document.metadata, "score": score}})
            for document, score in vector_store.similarity_search_with_score(query, k=6)
        ]

    def rerank(inputs: dict[str, Any]) -> list[Document]:
        return list(compressor.compress_documents(inputs["documents"], inputs["question"]))

    async def arerank(inputs: dict[str, Any]) -> list[Document]:
        return list(await compressor.acompress_documents(inputs["documents"], inputs["question"]))

    def as_context(documents: list[Document]) -> str:
        return "\n\n".join(f"[{document.id}] {document.page_content}" for document in documents)

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context only:\n{context}"), ("human", "{question}")]
    )
    chain = (
        RunnableParallel(
            documents=RunnableLambda(retrieve_with_scores), question=RunnablePassthrough()
        )
        | RunnableParallel(
            context=RunnableLambda(rerank, afunc=arerank) | RunnableLambda(as_context),
            question=lambda inputs: inputs["question"],
        )
        | prompt
    )
    prompt_value = await chain.ainvoke(QUERY) if asynchronous else chain.invoke(QUERY)

    first_stage = retrieve_with_scores(QUERY)
    expected = Reranker(KeywordBackend()).rerank(
        QUERY, engine_candidates(first_stage, "score"), top_n=2
    )
    system_message = prompt_value.to_messages()[0].content
    expected_context = "\n\n".join(f"[{item.id}] {item.text}" for item in expected)
    assert system_message == f"Answer from this context only:\n{expected_context}"
    assert expected.ids[0] == "refund-digital"


@pytest.mark.slow
def test_tiny_cross_encoder_scores_match_the_engine(tiny_cross_encoder_path: Path) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    documents = corpus_documents()
    compressor = CrossrankCompressor(
        backend="cross-encoder", model=str(tiny_cross_encoder_path), top_n=None
    )

    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=RunnableLambda(lambda _query: documents)
    )
    compressed = retriever.invoke(QUERY)
    expected = Reranker("cross-encoder", model=str(tiny_cross_encoder_path)).rerank(
        QUERY, engine_candidates(documents, None)
    )
    assert expected.report.status == "reranked"
    assert [document.id for document in compressed] == expected.ids
    assert [document.metadata["relevance_score"] for document in compressed] == pytest.approx(
        expected.scores, abs=1e-6
    )
    assert compressor.config is not None
    assert compressor.config["backend_options"]["model"] == str(tiny_cross_encoder_path)


# -- edge cases -----------------------------------------------------------------------------------


def test_empty_input_returns_empty() -> None:
    assert keyword_compressor().compress_documents([], QUERY) == []


async def test_one_document() -> None:
    document = Document(page_content="a lonely passage about refunds", id="only")
    (compressed,) = await keyword_compressor().acompress_documents([document], QUERY)
    assert compressed.id == "only"
    assert compressed.page_content == document.page_content
    assert compressed.metadata["relevance_score"] == pytest.approx(1.0)  # softmax of one
    assert compressed is not document


def test_duplicates_are_dropped_by_the_engine() -> None:
    documents = [
        Document(page_content="Refunds for digital downloads", id="a"),
        Document(page_content="Refunds for digital downloads, again", id="a"),  # same id
        Document(page_content="gift cards are not refundable"),
        Document(page_content="gift cards are not refundable"),  # same text, no id
    ]
    compressed = keyword_compressor(top_n=None).compress_documents(documents, QUERY)
    assert len(compressed) == 2
    assert [document.page_content for document in compressed] == [
        "Refunds for digital downloads",
        "gift cards are not refundable",
    ]


def test_documents_without_ids_keep_none() -> None:
    documents = [Document(page_content=text) for text in PASSAGES.values()]
    compressed = keyword_compressor(top_n=None).compress_documents(documents, QUERY)
    assert len(compressed) == len(documents)
    assert all(document.id is None for document in compressed)
    assert sorted(document.page_content for document in compressed) == sorted(PASSAGES.values())


def test_documents_with_empty_text_are_scored_not_lost() -> None:
    documents = [
        Document(page_content="", id="blank"),
        Document(page_content="Refunds for digital downloads", id="match"),
    ]
    compressed = keyword_compressor(top_n=None).compress_documents(documents, QUERY)
    assert [document.id for document in compressed] == ["match", "blank"]
    assert compressed[1].page_content == ""


def test_nested_metadata_kept_and_callers_documents_untouched() -> None:
    documents = [
        Document(
            page_content=text,
            id=doc_id,
            metadata={
                "source": {"path": f"kb/{doc_id}.md", "tags": ["support", doc_id]},
                "relevance_score": 0.5 + index / 100,
            },
        )
        for index, (doc_id, text) in enumerate(PASSAGES.items())
    ]
    snapshot = copy.deepcopy(documents)
    compressed = keyword_compressor(top_n=4).compress_documents(documents, QUERY)

    assert documents == snapshot
    originals = {document.id: document for document in documents}
    for document in compressed:
        original = originals[document.id]
        assert document is not original
        assert document.metadata is not original.metadata
        assert document.metadata["source"] == original.metadata["source"]
        assert document.metadata["first_stage_score"] == original.metadata["relevance_score"]
        assert document.metadata["relevance_score"] != original.metadata["relevance_score"]


def test_only_numeric_metadata_counts_as_a_first_stage_score() -> None:
    documents = [
        Document(page_content="Refunds for digital downloads", metadata={"score": "high"}),
        Document(page_content="Gift cards", metadata={"score": 0.25}),
    ]
    compressed = keyword_compressor(top_n=None).compress_documents(documents, QUERY)
    by_text = {document.page_content: document.metadata for document in compressed}
    assert "first_stage_score" not in by_text["Refunds for digital downloads"]
    assert by_text["Gift cards"]["first_stage_score"] == 0.25


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_backend_failure_is_flagged_and_keeps_first_stage_order(asynchronous: bool) -> None:
    compressor = CrossrankCompressor(reranker=Reranker(FailingBackend()), top_n=3)
    documents = corpus_documents()
    if asynchronous:
        compressed = await compressor.acompress_documents(documents, QUERY)
    else:
        compressed = compressor.compress_documents(documents, QUERY)
    assert [document.id for document in compressed] == list(PASSAGES)[:3]
    for document in compressed:
        assert document.metadata["rerank_status"] == "fallback"
        assert "scoring exploded" in document.metadata["rerank_error"]


def test_strict_reranker_raises_instead_of_falling_back() -> None:
    compressor = CrossrankCompressor(reranker=Reranker(FailingBackend(), strict=True))
    with pytest.raises(BackendError, match="scoring exploded"):
        compressor.compress_documents(corpus_documents(), QUERY)


def test_bad_query_and_documents_name_the_value() -> None:
    compressor = keyword_compressor()
    with pytest.raises(InvalidInputError, match="query must not be empty"):
        compressor.compress_documents(corpus_documents(), "  ")
    with pytest.raises(InvalidInputError, match="document 1 must be a langchain Document"):
        compressor.compress_documents([corpus_documents()[0], "plain text"], QUERY)  # type: ignore[list-item]


# -- construction and serialization ----------------------------------------------------------------


def test_builds_its_own_reranker_from_options() -> None:
    compressor = CrossrankCompressor(backend="embedding", normalization="sigmoid", top_n=2)
    assert compressor.reranker.top_n == 2
    assert compressor.reranker.backend.name == "embedding"
    assert compressor.reranker.normalizer.name == "sigmoid"


def test_default_top_n_follows_langchain_convention() -> None:
    compressed = keyword_compressor().compress_documents(corpus_documents(), QUERY)
    assert len(compressed) == 3


def test_conflicting_or_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="give only one of"):
        CrossrankCompressor(reranker=Reranker(KeywordBackend()), backend="embedding")
    with pytest.raises(ConfigurationError, match=r"must be a crossrank\.Reranker"):
        CrossrankCompressor(reranker="cross-encoder")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="top_n must be >= 1, got 0"):
        keyword_compressor(top_n=0)
    with pytest.raises(InvalidInputError, match=r"threshold 2\.0 is outside"):
        keyword_compressor(threshold=2.0)


def test_serialization_round_trips_without_secrets() -> None:
    secret = "sk-do-not-leak-4242"
    compressor = CrossrankCompressor(
        backend="cohere", backend_options={"api_key": secret}, top_n=4, threshold=0.1
    )
    dumped = compressor.model_dump()
    for text in (str(dumped), compressor.model_dump_json(), repr(compressor)):
        assert secret not in text
    assert dumped["config"]["backend"] == "cohere"

    local = CrossrankCompressor(backend="embedding", normalization="sigmoid", top_n=4)
    rebuilt = CrossrankCompressor(**local.model_dump())
    assert rebuilt.model_dump() == local.model_dump()
    assert rebuilt.reranker.normalizer.name == "sigmoid"

    instance_backed = keyword_compressor()
    assert instance_backed.model_dump()["config"] is None
    assert instance_backed.model_dump_json()  # does not blow up on the private reranker
