"""CrossrankRanker inside real Haystack pipelines (Haystack 2.x and 3.x).

The deterministic keyword backend makes orders predictable; serialization tests use the
tiny locally built cross-encoder because only a backend given by name can be serialized.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

haystack = pytest.importorskip("haystack")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.core.errors import SerializationError  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack.document_stores.types import DuplicatePolicy  # noqa: E402
from haystack.utils import Secret  # noqa: E402

from crossrank import BackendError, Candidate, ConfigurationError, InvalidInputError, Reranker  # noqa: E402
from crossrank.integrations.haystack import CrossrankRanker  # noqa: E402
from tests.support.backends import FailingBackend, KeywordBackend  # noqa: E402

CANONICAL_TYPE = "haystack_integrations.components.rankers.crossrank.CrossrankRanker"

CORPUS = [
    Document(content="refunds for physical goods are issued within fourteen days of the return"),
    Document(content="refunds for digital downloads are only possible before the file is opened"),
    Document(content="the capital of germany is berlin and about 3.7 million people live there"),
    Document(content="paris is the capital of france and sits on the seine"),
    Document(content="to reset your password open settings and choose security"),
    Document(content="shipping to europe takes five to seven business days"),
    Document(content="the warranty covers manufacturing defects for two years"),
    Document(content="cross encoders read the query and the passage together"),
    Document(content="a reranker reorders the candidates found by the first stage retriever"),
    Document(content="returns of digital goods are refunded only when the download failed"),
]

QUERY = "refunds for digital downloads"


def _async_pipeline_class() -> type:
    """Haystack 2.x runs async pipelines with AsyncPipeline; 3.x merged it into Pipeline."""
    return getattr(haystack, "AsyncPipeline", None) or Pipeline


def build_pipeline(ranker: CrossrankRanker, *, asynchronous: bool = False) -> Any:
    store = InMemoryDocumentStore()
    store.write_documents(CORPUS)
    pipeline = _async_pipeline_class()() if asynchronous else Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=8))
    pipeline.add_component("ranker", ranker)
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline


def pipeline_input(query: str = QUERY) -> dict[str, Any]:
    return {"retriever": {"query": query}, "ranker": {"query": query}}


def retrieved(query: str = QUERY, top_k: int = 8) -> list[Document]:
    store = InMemoryDocumentStore()
    store.write_documents(CORPUS)
    return InMemoryBM25Retriever(document_store=store, top_k=top_k).run(query=query)["documents"]


def summary(documents: list[Document]) -> list[tuple[str, str | None, float | None]]:
    return [(document.id, document.content, document.score) for document in documents]


@pytest.fixture
def tiny_ranker_options(tiny_cross_encoder_path: Path) -> dict[str, Any]:
    return {
        "backend": "cross-encoder",
        "model": str(tiny_cross_encoder_path),
        "backend_options": {"device": "cpu"},
        "top_k": 3,
    }


# -- pipelines -------------------------------------------------------------------------------


def test_pipeline_matches_the_engine_called_directly() -> None:
    pipeline = build_pipeline(CrossrankRanker(backend=KeywordBackend(), top_k=4))
    output = pipeline.run(pipeline_input())["ranker"]["documents"]

    first_stage = retrieved()
    engine_result = Reranker(KeywordBackend(), top_n=4).rerank(
        QUERY,
        [Candidate(text=d.content or "", id=d.id, first_stage_score=d.score) for d in first_stage],
    )
    assert [d.id for d in output] == engine_result.ids
    assert [d.score for d in output] == engine_result.scores
    assert [d.meta["rerank_raw_score"] for d in output] == [r.raw_score for r in engine_result]
    # The keyword backend puts the document naming all query terms first.
    assert output[0].content == CORPUS[1].content
    assert all(d.meta["rerank_status"] == "reranked" for d in output)


async def test_async_pipeline_gives_the_sync_output() -> None:
    sync_output = build_pipeline(CrossrankRanker(backend=KeywordBackend())).run(pipeline_input())
    async_pipeline = build_pipeline(CrossrankRanker(backend=KeywordBackend()), asynchronous=True)
    async_output = await async_pipeline.run_async(pipeline_input())
    assert summary(async_output["ranker"]["documents"]) == summary(
        sync_output["ranker"]["documents"]
    )


async def test_run_async_has_the_signature_and_output_of_run() -> None:
    ranker = CrossrankRanker(backend=KeywordBackend(), top_k=3)
    documents = retrieved()
    sync_result = ranker.run(query=QUERY, documents=documents)
    async_result = await ranker.run_async(query=QUERY, documents=documents)
    assert summary(async_result["documents"]) == summary(sync_result["documents"])
    assert set(async_result) == set(sync_result) == {"documents"}


@pytest.mark.slow
async def test_cross_encoder_pipeline_survives_dumps_and_loads(
    tiny_ranker_options: dict[str, Any],
) -> None:
    pipeline = build_pipeline(CrossrankRanker(**tiny_ranker_options))
    sync_output = pipeline.run(pipeline_input())["ranker"]["documents"]
    assert len(sync_output) == 3

    yaml_text = pipeline.dumps()
    assert f"type: {CANONICAL_TYPE}" in yaml_text
    # Loaded with Haystack's default settings: no allowed_modules, no unsafe mode.
    loaded = Pipeline.loads(yaml_text)
    loaded.get_component("retriever").document_store.write_documents(
        CORPUS, policy=DuplicatePolicy.OVERWRITE
    )
    loaded_output = loaded.run(pipeline_input())["ranker"]["documents"]
    assert [d.id for d in loaded_output] == [d.id for d in sync_output]
    assert [d.score for d in loaded_output] == pytest.approx([d.score for d in sync_output])

    async_pipeline = build_pipeline(CrossrankRanker(**tiny_ranker_options), asynchronous=True)
    async_output = (await async_pipeline.run_async(pipeline_input()))["ranker"]["documents"]
    assert [d.id for d in async_output] == [d.id for d in sync_output]
    assert [d.score for d in async_output] == pytest.approx([d.score for d in sync_output])


@pytest.mark.slow
def test_cross_encoder_component_matches_the_engine(tiny_ranker_options: dict[str, Any]) -> None:
    ranker = CrossrankRanker(**tiny_ranker_options)
    documents = retrieved()
    output = ranker.run(query=QUERY, documents=documents)["documents"]
    engine = Reranker(config=ranker.config)
    expected = engine.rerank(
        QUERY, [Candidate(d.content or "", id=d.id, first_stage_score=d.score) for d in documents]
    )
    assert [d.id for d in output] == expected.ids
    assert [d.score for d in output] == pytest.approx(expected.scores, rel=1e-6)
    assert math.isclose(
        sum(d.score for d in ranker.run(query=QUERY, documents=documents, top_k=8)["documents"]),
        1.0,
        rel_tol=1e-6,
    )


@pytest.mark.slow
def test_warm_up_twice_loads_the_model_once(tiny_ranker_options: dict[str, Any]) -> None:
    ranker = CrossrankRanker(**tiny_ranker_options)
    ranker.warm_up()
    backend = ranker._reranker.backend  # type: ignore[union-attr]
    model = backend.load()
    ranker.warm_up()
    assert ranker._reranker.backend is backend  # type: ignore[union-attr]
    assert backend.load() is model


def test_warm_up_is_idempotent_and_run_warms_up_on_its_own() -> None:
    class LoadCountingBackend(KeywordBackend):
        def __init__(self) -> None:
            super().__init__()
            self.loads = 0

        def load(self) -> None:
            self.loads += 1

    backend = LoadCountingBackend()
    ranker = CrossrankRanker(backend=backend)
    assert backend.loads == 0, "construction must not load anything"
    ranker.warm_up()
    ranker.warm_up()
    assert backend.loads == 1

    lazy_backend = LoadCountingBackend()
    lazy = CrossrankRanker(backend=lazy_backend)
    lazy.run(query=QUERY, documents=retrieved())
    lazy.run(query=QUERY, documents=retrieved())
    assert lazy_backend.loads == 1


# -- serialization and secrets ----------------------------------------------------------------


def test_to_dict_round_trip_keeps_every_option() -> None:
    # Nothing is loaded before warm_up, so the model path need not exist here.
    ranker = CrossrankRanker(
        backend="cross-encoder",
        model="/models/not-loaded-by-this-test",
        backend_options={"device": "cpu", "batch_size": 4},
        top_k=3,
        score_threshold=0.2,
        normalization="sigmoid",
        meta_fields_to_embed=["title"],
        embedding_separator=" | ",
        selective="always",
        blend="rrf",
        window_stride=16,
        window_aggregation="mean",
        deduplicate=False,
        strict=True,
    )
    data = ranker.to_dict()
    assert data["type"] == CANONICAL_TYPE
    restored = CrossrankRanker.from_dict(copy.deepcopy(data))
    assert restored.to_dict() == data
    assert restored.config.normalization == "sigmoid"
    assert restored.config == ranker.config


def test_env_var_secret_is_serialized_as_a_reference_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COHERE_API_KEY", "sk-plaintext-must-not-leak")
    ranker = CrossrankRanker(
        backend="cohere", model="rerank-v3.5", api_key=Secret.from_env_var("COHERE_API_KEY")
    )
    data = ranker.to_dict()
    assert data["init_parameters"]["config"]["backend_options"]["api_key"] == {
        "type": "env_var",
        "env_vars": ["COHERE_API_KEY"],
        "strict": True,
    }
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    yaml_text = pipeline.dumps()
    assert "sk-plaintext-must-not-leak" not in yaml_text
    assert "sk-plaintext-must-not-leak" not in repr(ranker)

    loaded = Pipeline.loads(yaml_text).get_component("ranker")
    assert isinstance(loaded, CrossrankRanker)
    key = loaded.config.backend_options["api_key"]
    assert key.resolve_value() == "sk-plaintext-must-not-leak"


def test_a_fresh_process_loads_the_yaml_through_the_installed_package(tmp_path: Path) -> None:
    """Haystack imports the component from its ``type:`` alone, under the default allowlist.

    Runs outside the repository so that only the installed package can satisfy the import.
    """
    pipeline = Pipeline()
    pipeline.add_component("ranker", CrossrankRanker(backend="embedding", top_k=2))
    (tmp_path / "pipeline.yaml").write_text(pipeline.dumps())
    script = textwrap.dedent(
        """
        import sys
        from haystack import Pipeline
        assert not any(name.startswith("crossrank") for name in sys.modules)
        ranker = Pipeline.loads(open("pipeline.yaml").read()).get_component("ranker")
        print(type(ranker).__module__, type(ranker).__name__, ranker.config.top_n)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (
        "loading failed; is haystack_integrations.components.rankers.crossrank packaged "
        f"(pyproject packages) and installed?\n{done.stderr[-2000:]}"
    )
    assert done.stdout.split() == [
        "haystack_integrations.components.rankers.crossrank",
        "CrossrankRanker",
        "2",
    ]


def test_custom_env_var_secret_round_trips() -> None:
    secret = Secret.from_env_var("MY_JINA_KEY", strict=False)
    data = CrossrankRanker(backend="jina", api_key=secret).to_dict()
    assert data["init_parameters"]["config"]["backend_options"]["api_key"]["env_vars"] == [
        "MY_JINA_KEY"
    ]
    assert CrossrankRanker.from_dict(data).config.backend_options["api_key"].to_dict() == (
        secret.to_dict()
    )


def test_token_secret_refuses_to_serialize() -> None:
    ranker = CrossrankRanker(backend="cohere", api_key=Secret.from_token("sk-token-value"))
    with pytest.raises(SerializationError, match="token"):
        ranker.to_dict()
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    with pytest.raises(SerializationError, match="token"):
        pipeline.dumps()


def test_token_secret_reaches_the_backend() -> None:
    pytest.importorskip("cohere")
    ranker = CrossrankRanker(backend="cohere", api_key=Secret.from_token("sk-token-value"))
    ranker.warm_up()
    backend = ranker._reranker.backend  # type: ignore[union-attr]
    assert backend.name == "cohere"
    assert "sk-token-value" not in repr(backend)


def test_plain_keys_in_backend_options_are_never_serialized() -> None:
    ranker = CrossrankRanker(backend="cohere", backend_options={"api_key": "sk-plain"})
    with pytest.raises(SerializationError, match="api_key"):
        ranker.to_dict()


def test_a_backend_instance_cannot_be_serialized() -> None:
    with pytest.raises(SerializationError, match="by name"):
        CrossrankRanker(backend=KeywordBackend()).to_dict()


def test_construction_is_light_and_checks_options() -> None:
    # No model exists at this path: nothing is loaded until warm_up.
    ranker = CrossrankRanker(backend="cross-encoder", model="/nonexistent/model")
    assert ranker._reranker is None
    with pytest.raises(ConfigurationError, match="unknown backend"):
        CrossrankRanker(backend="bm42")
    with pytest.raises(InvalidInputError, match="threshold"):
        CrossrankRanker(backend=KeywordBackend(), score_threshold=3.0)
    with pytest.raises(InvalidInputError, match="top_n"):
        CrossrankRanker(backend=KeywordBackend(), top_k=0)
    with pytest.raises(ConfigurationError, match="not both"):
        CrossrankRanker(reranker=Reranker(KeywordBackend()), config={"backend": "embedding"})
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['api_key'\]"):
        CrossrankRanker(backend="embedding", api_key=Secret.from_env_var("X", strict=False))
    with pytest.raises(ConfigurationError, match="meta_fields_to_embed"):
        CrossrankRanker(backend=KeywordBackend(), meta_fields_to_embed="title")  # type: ignore[arg-type]


# -- documents in, documents out ---------------------------------------------------------------


def test_empty_input_returns_no_documents_without_warming_up() -> None:
    backend = KeywordBackend()
    ranker = CrossrankRanker(backend=backend)
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}
    assert asyncio.run(ranker.run_async(query=QUERY, documents=[])) == {"documents": []}
    assert backend.calls == []
    assert ranker._reranker is None


def test_one_document() -> None:
    document = Document(content="refunds for digital downloads", score=3.5)
    output = CrossrankRanker(backend=KeywordBackend()).run(query=QUERY, documents=[document])
    (only,) = output["documents"]
    assert only.id == document.id
    assert only.score == pytest.approx(1.0)  # softmax over one candidate
    assert only.meta["first_stage_score"] == 3.5
    assert only.meta["first_stage_rank"] == 1


def test_duplicates_are_scored_and_returned_once() -> None:
    backend = KeywordBackend()
    first, second = CORPUS[0], CORPUS[1]
    documents = [first, second, Document(content=first.content), second]
    output = CrossrankRanker(backend=backend).run(query=QUERY, documents=documents)["documents"]
    assert sorted(d.id for d in output) == sorted([first.id, second.id])
    assert len(backend.calls) == 1
    assert len(backend.calls[0][1]) == 2


def test_same_content_with_different_meta_is_not_a_duplicate() -> None:
    a = Document(content="refunds for digital downloads", meta={"source": "faq"})
    b = Document(content="refunds for digital downloads", meta={"source": "terms"})
    assert a.id != b.id
    output = CrossrankRanker(backend=KeywordBackend()).run(query=QUERY, documents=[a, b])
    assert {d.meta["source"] for d in output["documents"]} == {"faq", "terms"}


def test_documents_without_content_are_kept_and_read_through_meta_fields() -> None:
    backend = KeywordBackend()
    blob_only = Document(content=None, meta={"title": "refunds for digital downloads"})
    plain = Document(content="shipping to europe")
    ranker = CrossrankRanker(backend=backend, meta_fields_to_embed=["title"])
    output = ranker.run(query=QUERY, documents=[plain, blob_only])["documents"]
    assert [d.id for d in output] == [blob_only.id, plain.id]
    assert output[0].content is None
    assert backend.calls[0][1] == ["shipping to europe", "refunds for digital downloads"]

    no_text = Document(content=None)
    output = CrossrankRanker(backend=KeywordBackend()).run(query=QUERY, documents=[no_text, plain])
    assert {d.id for d in output["documents"]} == {no_text.id, plain.id}


def test_documents_with_empty_text_are_kept() -> None:
    empty = Document(content="")
    relevant = Document(content="refunds for digital downloads")
    output = CrossrankRanker(backend=KeywordBackend()).run(query=QUERY, documents=[empty, relevant])
    assert [d.id for d in output["documents"]] == [relevant.id, empty.id]
    assert output["documents"][1].content == ""


def test_meta_fields_are_joined_with_the_separator() -> None:
    backend = KeywordBackend()
    document = Document(content="body text", meta={"title": "Refunds", "year": 2024})
    CrossrankRanker(
        backend=backend,
        meta_fields_to_embed=["title", "missing", "year"],
        embedding_separator=" | ",
    ).run(query=QUERY, documents=[document])
    assert backend.calls[0][1] == ["Refunds | 2024 | body text"]


def test_caller_documents_and_nested_metadata_are_untouched() -> None:
    nested = {"source": {"url": "https://example.org/refunds", "tags": ["faq", "billing"]}}
    documents = [
        Document(content="refunds for digital downloads", meta=copy.deepcopy(nested), score=1.5),
        Document(content="shipping to europe", meta={"page": 3}, score=2.5),
    ]
    before = [d.to_dict() for d in documents]
    output = CrossrankRanker(backend=KeywordBackend()).run(query=QUERY, documents=documents)
    assert [d.to_dict() for d in documents] == before
    by_id = {d.id: d for d in output["documents"]}
    returned = by_id[documents[0].id]
    assert returned is not documents[0]
    assert returned.meta["source"] == nested["source"]
    assert returned.meta["first_stage_score"] == 1.5
    assert returned.content == documents[0].content
    assert by_id[documents[1].id].meta["page"] == 3


def test_top_k_and_threshold_can_be_overridden_per_run() -> None:
    ranker = CrossrankRanker(backend=KeywordBackend(), top_k=2, normalization="none")
    documents = list(CORPUS)
    assert len(ranker.run(query=QUERY, documents=documents)["documents"]) == 2
    assert len(ranker.run(query=QUERY, documents=documents, top_k=5)["documents"]) == 5
    # Raw keyword scores: only documents sharing at least two query terms score >= 1.5.
    kept = ranker.run(query=QUERY, documents=documents, top_k=10, score_threshold=1.5)
    assert [d.content for d in kept["documents"]] == [CORPUS[1].content, CORPUS[0].content]
    assert all(d.score >= 1.5 for d in kept["documents"])  # type: ignore[operator]


def test_normalization_none_and_sigmoid_give_raw_and_scaled_scores() -> None:
    documents = retrieved()
    raw = CrossrankRanker(backend=KeywordBackend(), normalization="none").run(
        query=QUERY, documents=documents
    )["documents"]
    assert all(d.score == d.meta["rerank_raw_score"] for d in raw)
    scaled = CrossrankRanker(backend=KeywordBackend(), normalization="sigmoid").run(
        query=QUERY, documents=documents
    )["documents"]
    for document in scaled:
        expected = 1.0 / (1.0 + math.exp(-document.meta["rerank_raw_score"]))
        assert document.score == pytest.approx(expected)


def test_backend_failure_falls_back_to_first_stage_order_and_says_so() -> None:
    documents = retrieved()
    ranker = CrossrankRanker(backend=FailingBackend(), top_k=None)
    output = ranker.run(query=QUERY, documents=documents)["documents"]
    assert [d.id for d in output] == [d.id for d in documents]
    assert all(d.meta["rerank_status"] == "fallback" for d in output)
    assert all("scoring exploded" in d.meta["rerank_error"] for d in output)
    assert all(d.meta["rerank_raw_score"] is None for d in output)

    async_output = asyncio.run(ranker.run_async(query=QUERY, documents=documents))["documents"]
    assert summary(async_output) == summary(output)

    strict = CrossrankRanker(backend=FailingBackend(), strict=True)
    with pytest.raises(BackendError, match="scoring exploded"):
        strict.run(query=QUERY, documents=documents)


def test_bad_input_names_the_bad_value() -> None:
    ranker = CrossrankRanker(backend=KeywordBackend())
    with pytest.raises(InvalidInputError, match="document 1 must be a haystack Document"):
        ranker.run(query=QUERY, documents=[CORPUS[0], "plain text"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="sequence of haystack Document"):
        ranker.run(query=QUERY, documents="refunds")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="query"):
        ranker.run(query="  ", documents=[CORPUS[0]])


def test_a_ready_reranker_is_accepted_and_top_k_applies() -> None:
    shared = Reranker(KeywordBackend())
    ranker = CrossrankRanker(reranker=shared, top_k=2)
    documents = [
        Document(content="refunds for digital downloads"),
        Document(content="shipping times"),
        Document(content="digital refunds policy"),
    ]
    output = ranker.run(query="digital refunds", documents=documents)["documents"]
    direct = shared.rerank("digital refunds", [d.content for d in documents], top_n=2)
    assert [d.content for d in output] == direct.texts
    assert [d.score for d in output] == direct.scores
    with pytest.raises(SerializationError):
        ranker.to_dict()
    with pytest.raises(ConfigurationError, match="given by name"):
        CrossrankRanker(reranker=shared, model="m")
