"""The two wire formats, read into one request and written back from one result.

Cohere v2 (``POST /v2/rerank``): ``{model, query, documents, top_n, max_tokens_per_doc}`` ->
``{id, results: [{index, relevance_score}], meta}``. Text Embeddings Inference
(``POST /rerank``): ``{query, texts, raw_scores, return_text, truncate,
truncation_direction}`` -> ``[{index, score, text?}]``. Both accept crossrank's extras,
``first_stage_scores`` (one number per document) and ``report`` (true: add what the engine
did), which the standard clients never send and ignore when they come back.

Parsing is plain Python, not a schema library, so every refusal names the field and the
value at fault and is a :class:`RequestError` the app turns into a 4xx.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossrank.types import Candidate, RerankReport, RerankResult

API_VERSION = "2"


class RequestError(Exception):
    """A client's mistake: answered with ``status`` and a message naming ``field``."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RerankRequest:
    """One rerank request, whichever format it came in."""

    query: str
    documents: list[str]
    top_n: int | None = None
    first_stage_scores: list[float] | None = None
    report: bool = False
    model: str | None = None
    max_tokens_per_doc: int | None = None
    raw_scores: bool = False
    return_text: bool = False

    def candidates(self) -> list[Candidate]:
        scores: Sequence[float | None] = self.first_stage_scores or [None] * len(self.documents)
        return [
            Candidate(text=text, first_stage_score=score)
            for text, score in zip(self.documents, scores, strict=True)
        ]


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError(400, f"the request body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _query(body: Mapping[str, Any]) -> str:
    if "query" not in body:
        raise RequestError(400, "field 'query' is required", field="query")
    query = body["query"]
    if not isinstance(query, str):
        raise RequestError(
            400, f"field 'query' must be a string, got {_kind(query)}", field="query"
        )
    if not query.strip():
        raise RequestError(400, "field 'query' must not be empty", field="query")
    return query


def _texts(body: Mapping[str, Any], name: str, max_documents: int) -> list[str]:
    if name not in body:
        raise RequestError(400, f"field {name!r} is required", field=name)
    value = body[name]
    if not isinstance(value, list):
        raise RequestError(
            400, f"field {name!r} must be an array of strings, got {_kind(value)}", field=name
        )
    if len(value) > max_documents:
        raise RequestError(
            413,
            f"field {name!r} has {len(value)} documents; this server accepts at most "
            f"{max_documents} per request",
            field=name,
        )
    texts: list[str] = []
    for position, item in enumerate(value):
        # Cohere's v1 clients sent {"text": ...} objects; they are still accepted.
        if isinstance(item, Mapping) and "text" in item:
            item = item["text"]
        if not isinstance(item, str):
            raise RequestError(
                400,
                f"{name}[{position}] must be a string, got {_kind(item)}",
                field=f"{name}[{position}]",
            )
        texts.append(item)
    return texts


def _optional_int(body: Mapping[str, Any], name: str, *, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(
            400, f"field {name!r} must be an integer >= {minimum}, got {value!r}", field=name
        )
    return value


def _optional_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"field {name!r} must be true or false, got {value!r}", field=name)
    return value


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f"field {name!r} must be a string, got {_kind(value)}", field=name)
    return value


def _first_stage_scores(body: Mapping[str, Any], count: int) -> list[float] | None:
    value = body.get("first_stage_scores")
    if value is None:
        return None
    name = "first_stage_scores"
    if not isinstance(value, list):
        raise RequestError(
            400, f"field {name!r} must be an array of numbers, got {_kind(value)}", field=name
        )
    if len(value) != count:
        raise RequestError(
            400, f"field {name!r} has {len(value)} numbers for {count} documents", field=name
        )
    scores: list[float] = []
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise RequestError(
                400,
                f"{name}[{position}] must be a finite number, got {item!r}",
                field=f"{name}[{position}]",
            )
        scores.append(float(item))
    return scores


def parse_cohere(body: Any, *, max_documents: int) -> RerankRequest:
    """A Cohere v2 rerank body; unknown fields (``relevant_spans``...) are ignored."""
    body = _require_object(body)
    model = _optional_str(body, "model")
    query = _query(body)
    documents = _texts(body, "documents", max_documents)
    return RerankRequest(
        query=query,
        documents=documents,
        top_n=_optional_int(body, "top_n"),
        max_tokens_per_doc=_optional_int(body, "max_tokens_per_doc"),
        first_stage_scores=_first_stage_scores(body, len(documents)),
        report=_optional_bool(body, "report"),
        model=model,
    )


_TRUNCATION_DIRECTIONS = ("left", "right")


def parse_tei(body: Any, *, max_documents: int) -> RerankRequest:
    """A TEI rerank body. ``truncate`` is accepted: crossrank windows long texts instead."""
    body = _require_object(body)
    query = _query(body)
    texts = _texts(body, "texts", max_documents)
    _optional_bool(body, "truncate")
    direction = _optional_str(body, "truncation_direction")
    if direction is not None and direction.lower() not in _TRUNCATION_DIRECTIONS:
        raise RequestError(
            400,
            f"field 'truncation_direction' must be 'Left' or 'Right', got {direction!r}",
            field="truncation_direction",
        )
    return RerankRequest(
        query=query,
        documents=texts,
        top_n=_optional_int(body, "top_n"),
        first_stage_scores=_first_stage_scores(body, len(texts)),
        report=_optional_bool(body, "report"),
        raw_scores=_optional_bool(body, "raw_scores"),
        return_text=_optional_bool(body, "return_text"),
    )


def report_body(report: RerankReport) -> dict[str, Any]:
    """The engine's report as JSON: status, skip decision, fallback error and timings."""
    decision = report.selective
    return {
        "status": report.status,
        "backend": report.backend,
        "model": report.model,
        "normalization": report.normalization,
        "pairs_scored": report.pairs_scored,
        "skipped": report.skipped,
        "fallback": report.fell_back,
        "error": report.error,
        "duplicates": [duplicate.input_index for duplicate in report.duplicates],
        "selective": None
        if decision is None
        else {
            "policy": decision.policy,
            "rerank": decision.rerank,
            "signal": decision.signal,
            "threshold": decision.threshold,
        },
        "blend": report.blend,
        "timings_ms": dict(report.timings_ms),
    }


def cohere_response(
    request: RerankRequest, result: RerankResult, *, warnings: Sequence[str] = ()
) -> dict[str, Any]:
    """Cohere's v2 response: results best first, ``index`` into the request's documents."""
    meta: dict[str, Any] = {
        "api_version": {"version": API_VERSION},
        "billed_units": {"search_units": 1},
    }
    if warnings:
        meta["warnings"] = list(warnings)
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "results": [{"index": item.input_index, "relevance_score": item.score} for item in result],
        "meta": meta,
    }
    if request.report:
        body["report"] = report_body(result.report)
    return body


def tei_response(request: RerankRequest, result: RerankResult) -> list[dict[str, Any]]:
    """TEI's response: a list, best first; ``raw_scores`` gives the model's raw output.

    A result that was not scored (skip or fallback) has no raw score, so its normalized
    score stands in for it.
    """
    ranks: list[dict[str, Any]] = []
    for item in result:
        score = item.raw_score if request.raw_scores and item.raw_score is not None else item.score
        rank: dict[str, Any] = {"index": item.input_index, "score": score}
        if request.return_text:
            rank["text"] = item.text
        ranks.append(rank)
    return ranks


def cohere_error(error: RequestError) -> dict[str, Any]:
    """Cohere's error shape (``message``), plus the field at fault."""
    body: dict[str, Any] = {"message": error.message}
    if error.field is not None:
        body["field"] = error.field
    return body


def tei_error(error: RequestError) -> dict[str, Any]:
    """TEI's error shape (``error``, ``error_type``), plus the field at fault."""
    kinds = {401: "Unauthorized", 413: "Validation", 429: "Overloaded", 503: "Unhealthy"}
    body: dict[str, Any] = {
        "error": error.message,
        "error_type": kinds.get(error.status, "Validation"),
    }
    if error.field is not None:
        body["field"] = error.field
    return body
