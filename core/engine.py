"""The reranking pipeline: the one place where every ranking decision is made.

validate -> deduplicate -> selective (maybe skip) -> windows -> backend.score -> aggregate
-> blend -> normalize -> threshold -> top_n

The sync and async entry points share every step but the backend call: ``_prepare`` plans
the call, the backend scores, ``_finish`` (or ``_first_stage_result``) builds the result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossrank.backends import create_backend
from crossrank.backends.base import Backend, TokenWindowing
from crossrank.blend import Blend, parse_blend
from crossrank.errors import BackendError, BackendResponseError, ConfigurationError, CrossrankError
from crossrank.log_limit import WarningThrottle
from crossrank.normalize import (
    Identity,
    MinMax,
    Normalizer,
    Sigmoid,
    Softmax,
    resolve_normalizer,
)
from crossrank.selective import AlwaysRerank, SelectivePolicy, parse_policy
from crossrank.types import (
    Candidate,
    DuplicateCandidate,
    RankedCandidate,
    RerankReport,
    RerankResult,
    RerankStatus,
    SelectiveDecision,
)
from crossrank.validation import (
    check_choice,
    check_query,
    check_threshold,
    check_top_n,
    to_candidates,
)
from crossrank.windows import (
    AGGREGATIONS,
    Aggregation,
    WindowPlan,
    aggregate,
    no_windows,
    plan_windows,
)

logger = logging.getLogger("crossrank")


@dataclass
class _Call:
    """Everything one rerank call decided before the backend runs."""

    query: str
    kept: list[Candidate]
    kept_input_indices: list[int]
    duplicates: tuple[DuplicateCandidate, ...]
    decision: SelectiveDecision | None
    windows: WindowPlan
    top_n: int | None
    threshold: float | None
    started: float
    timings_ms: dict[str, float] = field(default_factory=dict)

    def lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings_ms[stage] = (now - since) * 1000.0
        return now


def deduplicate(
    candidates: Sequence[Candidate],
) -> tuple[list[Candidate], list[int], tuple[DuplicateCandidate, ...]]:
    """Keep the first occurrence of each id (or, for id-less candidates, each text)."""
    seen: dict[tuple[str, str], int] = {}
    kept: list[Candidate] = []
    kept_indices: list[int] = []
    duplicates: list[DuplicateCandidate] = []
    for index, candidate in enumerate(candidates):
        key = ("id", candidate.id) if candidate.id is not None else ("text", candidate.text)
        first = seen.get(key)
        if first is not None:
            duplicates.append(
                DuplicateCandidate(
                    input_index=index,
                    kept_input_index=first,
                    key=key[1] if key[0] == "id" else key[1][:80],
                    reason="id" if key[0] == "id" else "text",
                )
            )
            continue
        seen[key] = index
        kept.append(candidate)
        kept_indices.append(index)
    return kept, kept_indices, tuple(duplicates)


class Reranker:
    """Second-stage reranking over any backend; the single entry point of crossrank.

    Construction is cheap: models load on the first call that has something to score, once
    per process (see :mod:`crossrank.registry`), so building a ``Reranker`` per request or
    per adapter is fine.
    """

    def __init__(
        self,
        backend: Backend | str = "cross-encoder",
        *,
        model: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        top_n: int | None = None,
        normalization: str | Normalizer = "softmax",
        temperature: float = 1.0,
        threshold: float | None = None,
        selective: SelectivePolicy | str | None = None,
        blend: Blend | str | None = None,
        windowing: bool = True,
        window_stride: int = 32,
        window_aggregation: Aggregation = "max",
        deduplicate: bool = True,
        strict: bool = False,
    ) -> None:
        options = dict(backend_options or {})
        self._backend_spec: tuple[str, dict[str, Any]] | None = None
        if isinstance(backend, str):
            if model is not None:
                options["model"] = model
            self.backend: Backend = create_backend(backend, **options)
            self._backend_spec = (backend, options)
        elif isinstance(backend, Backend):
            if model is not None or options:
                raise ConfigurationError(
                    "model and backend_options apply only when backend is given by name; "
                    f"configure the {type(backend).__name__} instance instead"
                )
            self.backend = backend
        else:
            raise ConfigurationError(
                f"backend must be a backend name or an object with score/ascore, got {backend!r}"
            )
        self.normalizer = resolve_normalizer(normalization, temperature=temperature)
        self.top_n = check_top_n(top_n)
        self.threshold = check_threshold(threshold, self.normalizer.bounds, self.normalizer.name)
        if isinstance(selective, str):
            selective = parse_policy(selective)
        if selective is not None and not isinstance(selective, SelectivePolicy):
            raise ConfigurationError(
                f"selective must be a policy spec (e.g. 'margin:0.3') or a SelectivePolicy, "
                f"got {selective!r}"
            )
        self.selective: SelectivePolicy = selective or AlwaysRerank()
        self.blend = parse_blend(blend)
        if (
            isinstance(window_stride, bool)
            or not isinstance(window_stride, int)
            or window_stride < 0
        ):
            raise ConfigurationError(
                f"window_stride must be an integer >= 0, got {window_stride!r}"
            )
        self.windowing = bool(windowing)
        self.window_stride = window_stride
        self.window_aggregation: Aggregation = check_choice(  # type: ignore[assignment]
            "window_aggregation", window_aggregation, AGGREGATIONS
        )
        self.deduplicate = bool(deduplicate)
        self.strict = bool(strict)
        self._normalization_spec = normalization if isinstance(normalization, str) else None
        self._temperature = temperature
        # Each fallback result is flagged; the log gets the first of a burst, not every one.
        self._fallback_warnings = WarningThrottle(logger)

    # -- configuration ----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """A JSON-able description that :meth:`from_config` turns back into an equal reranker.

        Secrets are never part of it: options whose name mentions a key, token or secret are
        dropped, so API backends must read them from the environment (or be given them again).
        """
        if self._backend_spec is None:
            raise ConfigurationError(
                f"this Reranker wraps a {type(self.backend).__name__} instance; only rerankers "
                "whose backend was given by name can be serialized"
            )
        if self._normalization_spec is None:
            raise ConfigurationError(
                f"normalization {self.normalizer.name!r} is an object; pass it again on load"
            )
        backend_name, backend_options = self._backend_spec
        selective_spec = getattr(self.selective, "spec", None)
        if selective_spec is None:
            raise ConfigurationError(
                f"selective policy {self.selective.name!r} has no spec and cannot be serialized"
            )
        return {
            "backend": backend_name,
            "backend_options": {
                name: value for name, value in backend_options.items() if not is_secret_option(name)
            },
            "top_n": self.top_n,
            "normalization": self._normalization_spec,
            "temperature": self._temperature,
            "threshold": self.threshold,
            "selective": selective_spec,
            "blend": getattr(self.blend, "spec", None),
            "windowing": self.windowing,
            "window_stride": self.window_stride,
            "window_aggregation": self.window_aggregation,
            "deduplicate": self.deduplicate,
            "strict": self.strict,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> Reranker:
        """Rebuild a reranker from :meth:`to_config` output; ``overrides`` win (e.g. api keys)."""
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"reranker config must be a mapping, got {config!r}")
        options = dict(config)
        unknown = set(options) - set(_CONFIG_KEYS)
        if unknown:
            raise ConfigurationError(f"unknown reranker config keys: {sorted(unknown)}")
        backend_options = dict(_mapping_option(options.pop("backend_options", None)))
        backend_options.update(_mapping_option(overrides.pop("backend_options", None)))
        options.update(overrides)
        return cls(
            options.pop("backend", "cross-encoder"), backend_options=backend_options, **options
        )

    def __repr__(self) -> str:
        return (
            f"Reranker(backend={self.backend.name!r}, model={self.backend.model_name!r}, "
            f"normalization={self.normalizer.name!r}, top_n={self.top_n!r})"
        )

    # -- public API -------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        *,
        top_n: int | None = None,
        threshold: float | None = None,
    ) -> RerankResult:
        """Rerank ``candidates`` (first-stage order) for ``query``; blocks while scoring."""
        call = self._prepare(query, candidates, top_n, threshold)
        unscored = self._result_without_scoring(call)
        if unscored is not None:
            return unscored
        try:
            self._plan_windows(call)
            scoring_started = time.perf_counter()
            window_scores = self.backend.score(call.query, call.windows.window_texts)
            call.lap("score", scoring_started)
            return self._finish(call, window_scores)
        except Exception as exc:  # a failing backend degrades to the first stage
            return self._fallback(call, exc)

    async def arerank(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        *,
        top_n: int | None = None,
        threshold: float | None = None,
    ) -> RerankResult:
        """Async twin of :meth:`rerank`; the backend's ``ascore`` keeps the loop free."""
        call = self._prepare(query, candidates, top_n, threshold)
        unscored = self._result_without_scoring(call)
        if unscored is not None:
            return unscored
        try:
            if self.windowing and isinstance(self.backend, TokenWindowing):
                # Planning tokenizes and may load the model: keep it off the event loop.
                await asyncio.to_thread(self._plan_windows, call)
            else:
                self._plan_windows(call)
            scoring_started = time.perf_counter()
            window_scores = await self.backend.ascore(call.query, call.windows.window_texts)
            call.lap("score", scoring_started)
            return self._finish(call, window_scores)
        except Exception as exc:
            return self._fallback(call, exc)

    # -- pipeline steps ---------------------------------------------------------------------

    def _prepare(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        top_n: int | None,
        threshold: float | None,
    ) -> _Call:
        started = time.perf_counter()
        checked_query = check_query(query)
        checked = to_candidates(candidates)
        call_top_n = check_top_n(top_n) if top_n is not None else self.top_n
        call_threshold = (
            check_threshold(threshold, self.normalizer.bounds, self.normalizer.name)
            if threshold is not None
            else self.threshold
        )
        if self.deduplicate:
            kept, kept_indices, duplicates = deduplicate(checked)
        else:
            kept, kept_indices, duplicates = checked, list(range(len(checked))), ()
        call = _Call(
            query=checked_query,
            kept=kept,
            kept_input_indices=kept_indices,
            duplicates=duplicates,
            decision=None,
            windows=no_windows([]),
            top_n=call_top_n,
            threshold=call_threshold,
            started=started,
        )
        mark = call.lap("validate", started)
        if not kept:
            return call
        call.decision = self.selective.decide(checked_query, kept)
        call.lap("selective", mark)
        return call

    def _result_without_scoring(self, call: _Call) -> RerankResult | None:
        """The result of a call the backend need not see (nothing to score, or a skip)."""
        if not call.kept:
            return self._first_stage_result(call, "empty")
        if call.decision is not None and not call.decision.rerank:
            return self._first_stage_result(call, "skipped")
        return None

    def _plan_windows(self, call: _Call) -> None:
        """Cut long texts into windows; this may load the model, so it runs under fallback."""
        started = time.perf_counter()
        texts = [candidate.text for candidate in call.kept]
        if self.windowing and isinstance(self.backend, TokenWindowing):
            call.windows = plan_windows(call.query, texts, self.backend, stride=self.window_stride)
        else:
            call.windows = no_windows(texts)
        call.lap("windows", started)

    def _finish(self, call: _Call, window_scores: Sequence[float]) -> RerankResult:
        started = time.perf_counter()
        scores = _checked_scores(window_scores, len(call.windows.window_texts), self.backend.name)
        raw = aggregate(call.windows, scores, self.window_aggregation)
        if self.blend is not None:
            first_stage_ranks = list(range(1, len(call.kept) + 1))
            first_stage_scores = [candidate.first_stage_score for candidate in call.kept]
            raw = self.blend.combine(first_stage_ranks, first_stage_scores, raw)
        normalized = self.normalizer(np.asarray(raw, dtype=np.float64))
        # Stable sort: equal scores keep first-stage order, so results are deterministic.
        order = sorted(range(len(raw)), key=lambda index: -raw[index])
        call.lap("normalize", started)
        return self._build(
            call,
            "reranked",
            order=order,
            raw_scores=raw,
            normalized=[float(value) for value in normalized],
        )

    def _first_stage_result(
        self, call: _Call, status: RerankStatus, error: str | None = None
    ) -> RerankResult:
        """First-stage order, scored by normalizing first-stage scores (or ranks if absent)."""
        first_stage = [candidate.first_stage_score for candidate in call.kept]
        if first_stage and all(score is not None for score in first_stage):
            basis = np.asarray(first_stage, dtype=np.float64)
        else:
            # No scores to read: a rank-derived score keeps the order and the scale sane.
            basis = -np.arange(len(call.kept), dtype=np.float64)
        # A fitted calibrator maps *reranker* scores to probabilities; fed BM25 scores it would
        # print confident nonsense, so first-stage results use softmax instead.
        normalizer = (
            self.normalizer if isinstance(self.normalizer, _SCALE_FREE_NORMALIZERS) else Softmax()
        )
        normalized = normalizer(basis) if len(basis) else basis
        return self._build(
            call,
            status,
            order=list(range(len(call.kept))),
            raw_scores=None,
            normalized=[float(value) for value in normalized],
            normalization=normalizer.name,
            error=error,
        )

    def _fallback(self, call: _Call, exc: Exception) -> RerankResult:
        if self.strict:
            if isinstance(exc, CrossrankError):
                raise exc
            raise BackendError(
                f"{self.backend.name} backend failed: {type(exc).__name__}: {exc}"
            ) from exc
        message = f"{type(exc).__name__}: {exc}"
        self._fallback_warnings.warning(
            "crossrank: %s backend failed, returning first-stage order (%s)",
            self.backend.name,
            message,
        )
        return self._first_stage_result(call, "fallback", error=message)

    def _build(
        self,
        call: _Call,
        status: RerankStatus,
        *,
        order: list[int],
        raw_scores: list[float] | None,
        normalized: list[float],
        normalization: str | None = None,
        error: str | None = None,
    ) -> RerankResult:
        ranked: list[RankedCandidate] = []
        for position in order:
            score = normalized[position]
            if call.threshold is not None and score < call.threshold:
                continue
            ranked.append(
                RankedCandidate(
                    candidate=call.kept[position],
                    input_index=call.kept_input_indices[position],
                    first_stage_rank=position + 1,
                    rank=len(ranked) + 1,
                    score=score,
                    raw_score=None if raw_scores is None else float(raw_scores[position]),
                )
            )
            if call.top_n is not None and len(ranked) >= call.top_n:
                break
        call.timings_ms["total"] = (time.perf_counter() - call.started) * 1000.0
        scored = status == "reranked"
        report = RerankReport(
            status=status,
            backend=self.backend.name,
            model=self.backend.model_name,
            normalization=normalization or self.normalizer.name,
            pairs_scored=len(call.kept) if scored else 0,
            windows_scored=len(call.windows.window_texts) if scored else 0,
            duplicates=call.duplicates,
            selective=call.decision,
            blend=self.blend.name if (self.blend is not None and scored) else None,
            error=error,
            timings_ms=dict(call.timings_ms),
        )
        return RerankResult(query=call.query, ranked=tuple(ranked), report=report)


# Normalizations that mean the same on any score scale, first-stage scores included.
_SCALE_FREE_NORMALIZERS = (Softmax, Sigmoid, MinMax, Identity)

_CONFIG_KEYS = (
    "backend",
    "backend_options",
    "top_n",
    "normalization",
    "temperature",
    "threshold",
    "selective",
    "blend",
    "windowing",
    "window_stride",
    "window_aggregation",
    "deduplicate",
    "strict",
)


def _mapping_option(value: Any) -> Mapping[str, Any]:
    """``backend_options`` from a config: a mapping with string keys, or nothing."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigurationError(
            f"backend_options must be a mapping of option names to values, got {value!r}"
        )
    return value


_SECRET_WORDS = ("key", "token", "secret", "password")


def is_secret_option(name: str) -> bool:
    """Option names that may hold credentials and must never be serialized or logged."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _checked_scores(scores: Sequence[float], expected: int, backend: str) -> list[float]:
    """A backend that returns the wrong count or non-finite values must not reorder anything."""
    values = [float(score) for score in scores]
    if len(values) != expected:
        raise BackendResponseError(
            f"{backend} backend returned {len(values)} scores for {expected} texts"
        )
    for position, value in enumerate(values):
        if not math.isfinite(value):
            raise BackendResponseError(
                f"{backend} backend returned a non-finite score {value!r} at position {position}"
            )
    return values
