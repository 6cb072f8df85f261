"""The engine's guarantees, checked again through each adapter in the framework's own objects.

For every adapter: what comes back is the engine's order over the framework objects the
caller passed (a permutation of a subset, built as copies), ids, text and metadata intact on
the copies, the caller's objects unmodified, ``top_n`` a prefix, thresholds monotone, and the
same answer every time. The expected order is computed by the engine on candidates built
independently here, so an adapter that reorders, drops or invents anything fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossrank import Candidate, InvalidInputError, Reranker
from tests.hardening.strategies import metadata_values, query_text, snapshot, tricky_text
from tests.support.backends import KeywordBackend

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ID_POOL = ("a", "b", "c", "d", "é", "\u200b")


@dataclass(frozen=True)
class DocSpec:
    """A framework-neutral description of one retrieved document."""

    text: str
    doc_id: str | None
    score: float | None
    meta: dict[str, Any]


doc_specs = st.lists(
    st.builds(
        DocSpec,
        text=tricky_text,
        doc_id=st.one_of(st.none(), st.sampled_from(ID_POOL)),
        score=st.one_of(st.none(), st.floats(-1e6, 1e6)),
        meta=st.dictionaries(st.text(max_size=5), metadata_values, max_size=3),
    ),
    max_size=15,
)


@dataclass
class Harness:
    """How to drive one adapter and read its objects, written once per framework."""

    name: str
    make_docs: Callable[[list[DocSpec]], list[Any]]
    run: Callable[..., list[Any]]  # (docs, query, *, top_n, threshold, asynchronous)
    candidates: Callable[[list[Any]], list[Candidate]]  # independent translation
    identity: Callable[[Any], tuple[Any, ...]]  # (id, text) of a returned object
    meta: Callable[[Any], dict[str, Any]]
    score: Callable[[Any], float | None]
    added_keys: frozenset[str]
    picture: Callable[[Any], str]  # deep snapshot of a caller's object


# -- LangChain --------------------------------------------------------------------------------


def langchain_harness() -> Harness:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from crossrank.integrations.langchain import CrossrankCompressor

    def make_docs(specs: list[DocSpec]) -> list[Any]:
        docs = []
        for spec in specs:
            meta = dict(spec.meta)
            if spec.score is not None:
                meta["score"] = spec.score
            docs.append(Document(page_content=spec.text, id=spec.doc_id, metadata=meta))
        return docs

    def run(docs, query, *, top_n, threshold, asynchronous=False):  # type: ignore[no-untyped-def]
        compressor = CrossrankCompressor(
            reranker=Reranker(KeywordBackend()), top_n=top_n, threshold=threshold
        )
        if asynchronous:
            return list(asyncio.run(compressor.acompress_documents(docs, query)))
        return list(compressor.compress_documents(docs, query))

    def candidates(docs: list[Any]) -> list[Candidate]:
        out = []
        for doc in docs:
            raw = doc.metadata.get("relevance_score", doc.metadata.get("score"))
            usable = (
                isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
            )
            out.append(
                Candidate(doc.page_content, id=doc.id, first_stage_score=raw if usable else None)
            )
        return out

    return Harness(
        name="langchain",
        make_docs=make_docs,
        run=run,
        candidates=candidates,
        identity=lambda doc: (doc.id, doc.page_content),
        meta=lambda doc: doc.metadata,
        score=lambda doc: doc.metadata["relevance_score"],
        added_keys=frozenset(
            {"relevance_score", "first_stage_score", "first_stage_rank", "rerank_status"}
        ),
        picture=lambda doc: snapshot((type(doc), doc.id, doc.page_content, doc.metadata)),
    )


# -- LlamaIndex -------------------------------------------------------------------------------


def llama_index_harness() -> Harness:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from crossrank.integrations.llama_index import CrossrankPostprocessor

    def make_docs(specs: list[DocSpec]) -> list[Any]:
        nodes = []
        for position, spec in enumerate(specs):
            # LlamaIndex gives every node an id; a repeated id is how duplicates arrive.
            node_id = spec.doc_id if spec.doc_id is not None else f"node-{position}"
            node = TextNode(text=spec.text, id_=node_id, metadata=dict(spec.meta))
            nodes.append(NodeWithScore(node=node, score=spec.score))
        return nodes

    def run(nodes, query, *, top_n, threshold, asynchronous=False):  # type: ignore[no-untyped-def]
        postprocessor = CrossrankPostprocessor(
            reranker=Reranker(KeywordBackend()), top_n=top_n, threshold=threshold
        )
        if asynchronous:
            return asyncio.run(
                postprocessor.apostprocess_nodes(nodes, query_bundle=QueryBundle(query))
            )
        return postprocessor.postprocess_nodes(nodes, query_str=query)

    def candidates(nodes: list[Any]) -> list[Candidate]:
        return [
            Candidate(
                node.node.get_content(metadata_mode=MetadataMode.EMBED),
                id=node.node.node_id,
                first_stage_score=node.score,
            )
            for node in nodes
        ]

    return Harness(
        name="llama_index",
        make_docs=make_docs,
        run=run,
        candidates=candidates,
        identity=lambda node: (node.node.node_id, node.node.text),
        meta=lambda node: node.node.metadata,
        score=lambda node: node.score,
        added_keys=frozenset({"retrieval_score", "rerank_status"}),
        picture=lambda node: snapshot(
            (
                node.score,
                node.node.node_id,
                node.node.text,
                node.node.metadata,
                node.node.excluded_embed_metadata_keys,
                node.node.excluded_llm_metadata_keys,
            )
        ),
    )


# -- Haystack ---------------------------------------------------------------------------------


def haystack_harness() -> Harness:
    pytest.importorskip("haystack")
    from haystack import Document

    from crossrank.integrations.haystack import CrossrankRanker

    def make_docs(specs: list[DocSpec]) -> list[Any]:
        # Haystack hashes content and meta into an id when none is given, and its hashing
        # cannot sort mixed-type nested keys; every document here gets an explicit id.
        return [
            Document(
                content=spec.text,
                id=spec.doc_id or f"doc-{position}",
                meta=dict(spec.meta),
                score=spec.score,
            )
            for position, spec in enumerate(specs)
        ]

    def run(docs, query, *, top_n, threshold, asynchronous=False):  # type: ignore[no-untyped-def]
        ranker = CrossrankRanker(backend=KeywordBackend(), top_k=top_n, score_threshold=threshold)
        if asynchronous:
            return asyncio.run(ranker.run_async(query=query, documents=docs))["documents"]
        return ranker.run(query=query, documents=docs)["documents"]

    def candidates(docs: list[Any]) -> list[Candidate]:
        return [Candidate(doc.content, id=doc.id, first_stage_score=doc.score) for doc in docs]

    return Harness(
        name="haystack",
        make_docs=make_docs,
        run=run,
        candidates=candidates,
        identity=lambda doc: (doc.id, doc.content),
        meta=lambda doc: doc.meta,
        score=lambda doc: doc.score,
        added_keys=frozenset(
            {"first_stage_score", "first_stage_rank", "rerank_raw_score", "rerank_status"}
        ),
        picture=lambda doc: snapshot(dataclasses.astuple(doc)),
    )


HARNESSES = {
    "langchain": langchain_harness,
    "llama_index": llama_index_harness,
    "haystack": haystack_harness,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]()


def expected_order(harness: Harness, docs: list[Any], query: str, **options: Any) -> list[int]:
    result = Reranker(KeywordBackend()).rerank(query, harness.candidates(docs), **options)
    return [item.input_index for item in result]


def check_objects(harness: Harness, docs: list[Any], out: list[Any], order: list[int]) -> None:
    assert len(out) == len(order)
    for returned, index in zip(out, order, strict=True):
        original = docs[index]
        assert returned is not original, "the caller's object was returned (and annotated)"
        assert harness.identity(returned) == harness.identity(original)
        returned_meta, original_meta = harness.meta(returned), harness.meta(original)
        for key, value in original_meta.items():
            if key not in harness.added_keys:
                assert snapshot(returned_meta[key]) == snapshot(value)
        score = harness.score(returned)
        assert score is not None and math.isfinite(score)
    identities = [harness.identity(item) for item in out]
    assert len(identities) == len(set(map(repr, identities)))


# -- the properties ---------------------------------------------------------------------------


@SETTINGS
@given(specs=doc_specs, query=query_text, asynchronous=st.booleans())
def test_adapter_returns_the_engine_order_over_intact_copies(
    harness: Harness, specs: list[DocSpec], query: str, asynchronous: bool
) -> None:
    docs = harness.make_docs(specs)
    pictures = [harness.picture(doc) for doc in docs]
    caller_list = list(docs)
    out = harness.run(docs, query, top_n=None, threshold=None, asynchronous=asynchronous)
    check_objects(harness, docs, out, expected_order(harness, docs, query))
    assert all(a is b for a, b in zip(docs, caller_list, strict=True))
    assert [harness.picture(doc) for doc in docs] == pictures, "a caller's object changed"


@SETTINGS
@given(specs=doc_specs, query=query_text)
def test_adapter_top_n_is_a_monotone_prefix(
    harness: Harness, specs: list[DocSpec], query: str
) -> None:
    docs = harness.make_docs(specs)
    full = harness.run(docs, query, top_n=None, threshold=None)
    full_ids = [harness.identity(doc) for doc in full]
    for top_n in range(1, len(full) + 2):
        out = harness.run(docs, query, top_n=top_n, threshold=None)
        assert [harness.identity(doc) for doc in out] == full_ids[:top_n]
        assert [harness.score(doc) for doc in out] == [harness.score(doc) for doc in full][:top_n]


@SETTINGS
@given(
    specs=doc_specs,
    query=query_text,
    thresholds=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=4),
)
def test_adapter_thresholds_are_monotone(
    harness: Harness, specs: list[DocSpec], query: str, thresholds: list[float]
) -> None:
    docs = harness.make_docs(specs)
    full = harness.run(docs, query, top_n=None, threshold=None)
    previous: set[str] | None = None
    for threshold in sorted(thresholds):
        out = harness.run(docs, query, top_n=None, threshold=threshold)
        expected = [doc for doc in full if harness.score(doc) >= threshold]  # type: ignore[operator]
        assert [harness.identity(d) for d in out] == [harness.identity(d) for d in expected]
        kept = {repr(harness.identity(doc)) for doc in out}
        if previous is not None:
            assert kept <= previous
        previous = kept


@SETTINGS
@given(specs=doc_specs, query=query_text)
def test_adapter_is_deterministic(harness: Harness, specs: list[DocSpec], query: str) -> None:
    docs = harness.make_docs(specs)
    first = harness.run(docs, query, top_n=None, threshold=None)
    second = harness.run(docs, query, top_n=None, threshold=None, asynchronous=True)
    assert [(harness.identity(d), harness.score(d)) for d in first] == [
        (harness.identity(d), harness.score(d)) for d in second
    ]


def test_adapters_with_ten_thousand_documents(harness: Harness) -> None:
    specs = [
        DocSpec(f"refund {index % 13} \u05d0 {index}", f"id-{index % 9_500}", None, {"n": index})
        for index in range(10_000)
    ]
    docs = harness.make_docs(specs)
    out = harness.run(docs, "refund 7", top_n=None, threshold=None)
    assert len(out) == 9_500
    check_objects(harness, docs, out, expected_order(harness, docs, "refund 7"))


def test_adapters_with_a_hundred_thousand_characters(harness: Harness) -> None:
    long_text = ("refund \u200b \U0001f44d\U0001f3fd e\u0301 \x00 \u202e ") * 6_000
    specs = [
        DocSpec(long_text[:100_000], "long", 1.0, {"bytes": b"\x00"}),
        DocSpec("refund policy", "short", 0.5, {"none": None, "nested": {"n": [1, 2.5]}}),
    ]
    docs = harness.make_docs(specs)
    out = harness.run(docs, "refund", top_n=None, threshold=None)
    check_objects(harness, docs, out, expected_order(harness, docs, "refund"))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_first_stage_scores(harness: Harness, bad: float) -> None:
    docs = harness.make_docs(
        [DocSpec("refund", "good", 1.0, {}), DocSpec("refund policy", "bad", bad, {})]
    )
    if harness.name == "langchain":
        # Documented choice: a metadata score that is not a finite number is not a ranking
        # signal and is ignored (LangChain documents carry no score field of their own).
        out = harness.run(docs, "refund", top_n=None, threshold=None)
        assert {doc.id for doc in out} == {"good", "bad"}
        bad_copy = next(doc for doc in out if doc.id == "bad")
        assert "first_stage_score" not in bad_copy.metadata
        return
    with pytest.raises(InvalidInputError, match=r"1 .*(finite|unusable)"):
        harness.run(docs, "refund", top_n=None, threshold=None)
