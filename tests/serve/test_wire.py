"""The two wire formats, parsed and written without a server."""

from __future__ import annotations

import pytest

from crossrank import Reranker
from crossrank.serve.wire import (
    RequestError,
    cohere_response,
    parse_cohere,
    parse_tei,
    tei_response,
)
from tests.serve.conftest import DOCUMENTS, QUERY
from tests.support.backends import KeywordBackend


def test_cohere_request_fields() -> None:
    request = parse_cohere(
        {
            "model": "rerank-v3.5",
            "query": QUERY,
            "documents": DOCUMENTS,
            "top_n": 2,
            "max_tokens_per_doc": 512,
            "relevant_spans": None,
            "first_stage_scores": [5, 4, 3, 2, 1],
            "report": True,
        },
        max_documents=10,
    )
    assert request.top_n == 2 and request.max_tokens_per_doc == 512 and request.report
    assert [c.first_stage_score for c in request.candidates()] == [5.0, 4.0, 3.0, 2.0, 1.0]


def test_cohere_nulls_are_absent_fields() -> None:
    """The SDK sends ``top_n: null`` and ``max_tokens_per_doc: null`` when unset."""
    request = parse_cohere(
        {"model": "m", "query": QUERY, "documents": DOCUMENTS, "top_n": None},
        max_documents=10,
    )
    assert request.top_n is None and request.max_tokens_per_doc is None


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([], 400, None),
        ({"documents": ["a"]}, 400, "query"),
        ({"query": 3, "documents": ["a"]}, 400, "query"),
        ({"query": "  ", "documents": ["a"]}, 400, "query"),
        ({"query": "q"}, 400, "documents"),
        ({"query": "q", "documents": "a"}, 400, "documents"),
        ({"query": "q", "documents": ["a", 7]}, 400, "documents[1]"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": True}, 400, "top_n"),
        ({"query": "q", "documents": ["a"], "model": 1}, 400, "model"),
        ({"query": "q", "documents": ["a"], "report": "yes"}, 400, "report"),
        (
            {"query": "q", "documents": ["a"], "first_stage_scores": [1, 2]},
            400,
            "first_stage_scores",
        ),
        (
            {"query": "q", "documents": ["a"], "first_stage_scores": ["x"]},
            400,
            "first_stage_scores[0]",
        ),
        ({"query": "q", "documents": ["a"] * 11}, 413, "documents"),
    ],
)
def test_cohere_refusals_name_the_field(body: object, status: int, field: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_cohere(body, max_documents=10)
    assert caught.value.status == status
    assert caught.value.field == field
    if field is not None:
        assert field.split("[")[0] in caught.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "q"}, "texts"),
        ({"query": "q", "texts": ["a"], "raw_scores": 1}, "raw_scores"),
        ({"query": "q", "texts": ["a"], "truncation_direction": "up"}, "truncation_direction"),
        ({"query": "q", "texts": ["a"], "return_text": "no"}, "return_text"),
    ],
)
def test_tei_refusals_name_the_field(body: object, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_tei(body, max_documents=10)
    assert caught.value.status == 400 and caught.value.field == field


def test_responses_follow_the_engine() -> None:
    reranker = Reranker(KeywordBackend())
    cohere_request = parse_cohere({"query": QUERY, "documents": DOCUMENTS}, max_documents=10)
    result = reranker.rerank(QUERY, cohere_request.candidates())
    body = cohere_response(cohere_request, result)
    assert [r["index"] for r in body["results"]] == [item.input_index for item in result]
    assert [r["relevance_score"] for r in body["results"]] == result.scores
    assert "report" not in body and body["meta"]["api_version"]["version"] == "2"

    tei_request = parse_tei(
        {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True},
        max_documents=10,
    )
    ranks = tei_response(tei_request, result)
    assert [r["score"] for r in ranks] == [item.raw_score for item in result]
    assert [r["text"] for r in ranks] == result.texts
