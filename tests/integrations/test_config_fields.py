"""Every RerankerConfig field reaches every adapter and survives its framework's own saving.

The adapters name no engine option, so this is what proves they forward all of them: each
field is set to a non-default value, saved the framework's way, loaded back, and compared.
No saved form may contain a credential; every adapter pickles and copies with its engine.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from crossrank import RerankerConfig, Secret
from tests.support.backends import OPTIONED_BACKEND
from tests.test_config import NON_DEFAULT

SECRET = "sk-adapter-secret-8080"
BACKEND_OPTIONS = {"weight": 2.0, "cache_key": "c", "token_budget": 32, "max_tokens_per_doc": 64}


def _options(api_key: Any) -> dict[str, Any]:
    return {"backend": OPTIONED_BACKEND, "api_key": api_key, **BACKEND_OPTIONS, **NON_DEFAULT}


def _langchain() -> tuple[Callable[..., Any], Callable[[Any], list[str]], Callable[[Any], Any]]:
    from crossrank.integrations.langchain import CrossrankCompressor

    def forms(adapter: Any) -> list[str]:
        return [adapter.model_dump_json(), str(adapter.model_dump()), repr(adapter)]

    return CrossrankCompressor, forms, lambda adapter: CrossrankCompressor(**adapter.model_dump())


def _llama_index() -> tuple[Callable[..., Any], Callable[[Any], list[str]], Callable[[Any], Any]]:
    from crossrank.integrations.llama_index import CrossrankPostprocessor

    def forms(adapter: Any) -> list[str]:
        return [json.dumps(adapter.to_dict()), adapter.to_json(), repr(adapter)]

    return (
        CrossrankPostprocessor,
        forms,
        lambda adapter: CrossrankPostprocessor.from_dict(adapter.to_dict()),
    )


def _haystack() -> tuple[Callable[..., Any], Callable[[Any], list[str]], Callable[[Any], Any]]:
    from haystack import Pipeline

    from crossrank.integrations.haystack import CrossrankRanker

    pipelines: dict[int, Pipeline] = {}  # a component joins one pipeline only

    def dumps(adapter: Any) -> str:
        if id(adapter) not in pipelines:
            pipelines[id(adapter)] = Pipeline()
            pipelines[id(adapter)].add_component("ranker", adapter)
        return pipelines[id(adapter)].dumps()

    def forms(adapter: Any) -> list[str]:
        return [dumps(adapter), json.dumps(adapter.to_dict()), repr(adapter)]

    return (
        CrossrankRanker,
        forms,
        lambda adapter: Pipeline.loads(dumps(adapter)).get_component("ranker"),
    )


ADAPTERS = {"langchain": _langchain, "llama_index": _llama_index, "haystack": _haystack}


def _config_of(adapter: Any) -> RerankerConfig:
    reranker = getattr(adapter, "reranker", None) or getattr(adapter, "_reranker", None)
    return reranker.config if reranker is not None else adapter.config


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_every_field_round_trips_through_the_frameworks_own_serialization(
    framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTER_TEST_KEY", SECRET)
    build, forms, reload = ADAPTERS[framework]()
    adapter = build(**_options(Secret.from_env_var("ADAPTER_TEST_KEY")))
    expected = RerankerConfig.from_options(**_options(Secret.from_env_var("ADAPTER_TEST_KEY")))
    assert _config_of(adapter) == expected
    for form in forms(adapter):
        assert SECRET not in form
    restored = _config_of(reload(adapter))
    assert restored == expected
    for name in RerankerConfig.engine_options():
        assert getattr(restored, name) == NON_DEFAULT[name], name
    assert restored.backend_options["api_key"].resolve_value() == SECRET


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_a_literal_key_never_appears_in_any_saved_form(framework: str) -> None:
    build, forms, _ = ADAPTERS[framework]()
    adapter = build(**_options(SECRET))
    try:
        saved = forms(adapter)
    except Exception as exc:  # Haystack refuses to save a token secret at all, as it should
        assert SECRET not in str(exc)
        assert "token" in str(exc)
    else:
        assert all(SECRET not in form for form in saved)


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_adapters_pickle_and_copy_with_their_engine(framework: str) -> None:
    build, _, _ = ADAPTERS[framework]()
    adapter = build(backend=OPTIONED_BACKEND, weight=2.0, top_n=2)
    for clone in (pickle.loads(pickle.dumps(adapter)), copy.deepcopy(adapter)):
        assert _config_of(clone) == _config_of(adapter)
        assert _rerank_with(framework, clone) == _rerank_with(framework, adapter)
    with pytest.raises(TypeError, match="token secret"):
        pickle.dumps(build(backend=OPTIONED_BACKEND, api_key=SECRET))


def _rerank_with(framework: str, adapter: Any) -> list[str]:
    texts = ["office hours", "refund policy for downloads", "refund window"]
    query = "refund downloads"
    if framework == "langchain":
        from langchain_core.documents import Document

        documents = adapter.compress_documents([Document(text) for text in texts], query)
        return [document.page_content for document in documents]
    if framework == "llama_index":
        from llama_index.core.schema import NodeWithScore, TextNode

        nodes = [NodeWithScore(node=TextNode(text=text)) for text in texts]
        return [n.node.get_content() for n in adapter.postprocess_nodes(nodes, query_str=query)]
    from haystack import Document as HaystackDocument

    output = adapter.run(query=query, documents=[HaystackDocument(content=t) for t in texts])
    return [document.content for document in output["documents"]]
