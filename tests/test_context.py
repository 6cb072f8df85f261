"""Context assembly: the engine function and each framework's idiom, in real pipelines."""

from __future__ import annotations

import pytest

from crossrank import ConfigurationError, Reranker
from crossrank.context import ContextConfig, assemble, assemble_context, tokenizer_counter
from tests.support.backends import KeywordBackend

PASSAGES = [
    "Refunds for digital downloads are paid within five days of the request.",
    "Refunds for digital downloads are paid within five days of a request.",  # near repeat
    "Shipping to Norway takes one week by post.",
    "Our office in Oslo opens at nine every weekday morning and closes at five.",
    "Refund requests need the order number.",
]


def test_budget_duplicates_and_order() -> None:
    plan = assemble(PASSAGES, config=ContextConfig(token_budget=30))
    assert plan.near_duplicates == (1,)
    assert plan.chosen == (0, 2, 4)  # the office passage (15 tokens) would overrun
    assert plan.over_budget == (3,)
    assert plan.tokens <= 30
    middle = assemble(PASSAGES, config=ContextConfig(token_budget=200, order="lost_in_the_middle"))
    assert middle.chosen == (0, 3, 4, 2)  # 1st, 3rd ... then ... 4th, 2nd: best at both ends


def test_exact_repeats_only_and_per_passage_overhead() -> None:
    plan = assemble(
        PASSAGES, config=ContextConfig(token_budget=200, near_duplicate_threshold=1.0)
    )
    assert plan.near_duplicates == ()
    costly = assemble(PASSAGES, config=ContextConfig(token_budget=40, tokens_per_passage=20))
    assert costly.chosen == (0,)


def test_a_tokenizer_counts_when_given() -> None:
    class Spaces:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
            return text.split(" ") + (["[CLS]"] if add_special_tokens else [])

    counted = ContextConfig(token_budget=13, count_tokens=tokenizer_counter(Spaces()))
    assert assemble(PASSAGES[:1], config=counted).chosen == (0,)  # 12 words, no specials


def test_bad_options_are_named() -> None:
    with pytest.raises(ConfigurationError, match="token_budget"):
        ContextConfig(token_budget=0)
    with pytest.raises(ConfigurationError, match="order"):
        ContextConfig(token_budget=10, order="random")
    with pytest.raises(ConfigurationError, match="near_duplicate_threshold"):
        ContextConfig(token_budget=10, near_duplicate_threshold=0)


def test_engine_function_after_a_rerank() -> None:
    result = Reranker(KeywordBackend(), top_n=None).rerank("refund downloads days", PASSAGES)
    chosen = assemble_context(result, token_budget=30)
    assert chosen[0].text == PASSAGES[0]
    assert PASSAGES[1] not in [item.text for item in chosen]


def test_langchain_compressor_then_assembler_in_a_retriever() -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from crossrank.integrations.langchain import CrossrankCompressor
    from crossrank.integrations.langchain_context import CrossrankContextAssembler

    store = InMemoryVectorStore.from_texts(PASSAGES, DeterministicFakeEmbedding(size=16))
    retriever = ContextualCompressionRetriever(
        base_compressor=DocumentCompressorPipeline(
            transformers=[
                CrossrankCompressor(reranker=Reranker(KeywordBackend()), top_n=None),
                CrossrankContextAssembler(token_budget=30),
            ]
        ),
        base_retriever=store.as_retriever(search_kwargs={"k": 5}),
    )
    texts = [doc.page_content for doc in retriever.invoke("refund downloads days")]
    assert texts[0] in PASSAGES[:2]  # the two near repeats tie on keywords; one survives
    assert len(set(texts) & set(PASSAGES[:2])) == 1


def test_llama_index_postprocessors_in_a_query_engine() -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from crossrank.integrations.llama_index import CrossrankPostprocessor
    from crossrank.integrations.llama_index_context import CrossrankContextPostprocessor

    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in PASSAGES], embed_model=MockEmbedding(embed_dim=8)
    )
    context = CrossrankContextPostprocessor(token_budget=30, order="lost_in_the_middle")
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=5,
        node_postprocessors=[
            CrossrankPostprocessor(reranker=Reranker(KeywordBackend()), top_n=None),
            context,
        ],
    )
    texts = [node.node.get_content() for node in engine.query("refund downloads days").source_nodes]
    assert texts[0] in PASSAGES[:2]
    assert len(set(texts) & set(PASSAGES[:2])) == 1
    again = CrossrankContextPostprocessor.from_dict(context.to_dict())
    assert again.context == context.context


def test_haystack_component_after_the_ranker_survives_dumps_and_loads() -> None:
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from haystack_integrations.components.rankers.crossrank import (
        CrossrankContextBuilder,
        CrossrankRanker,
    )

    store = InMemoryDocumentStore()
    store.write_documents([Document(content=text) for text in PASSAGES])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
    pipeline.add_component("ranker", CrossrankRanker(backend="embedding", top_k=None))
    pipeline.add_component("context", CrossrankContextBuilder(token_budget=30))
    pipeline.connect("retriever.documents", "ranker.documents")
    pipeline.connect("ranker.documents", "context.documents")
    loaded = Pipeline.loads(pipeline.dumps())
    query = "how long do refunds for downloads take"
    for runnable in (pipeline, loaded):
        output = runnable.run({"retriever": {"query": query}, "ranker": {"query": query}})
        texts = [document.content for document in output["context"]["documents"]]
        assert len(texts) == len(set(texts))
        assert not {PASSAGES[0], PASSAGES[1]} <= set(texts)
        assert sum(len(text.split()) for text in texts) <= 30
