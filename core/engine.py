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
from crossrank.backends.base import Backend, Ranking, TokenWindowing, scores_from_ranks
from crossrank.blend import parse_blend
from crossrank.budget import (
    CHUNK_SHARE,
    BudgetOutcome,
    chunk_size_for,
    chunk_size_of,
    chunks,
    cost_model_for,
    growing_chunks,
)
from crossrank.config import RerankerConfig
from crossrank.errors import BackendError, BackendResponseError, ConfigurationError, CrossrankError
from crossrank.log_limit import WarningThrottle
from crossrank.normalize import (
    Identity,
    MinMax,
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
    check_latency_budget,
    check_query,
    check_threshold,
    check_top_n,
    to_candidates,
)
from crossrank.windows import Aggregation, WindowPlan, aggregate, no_windows, plan_windows

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
    scored_from_ranks: bool = False
    budget_ms: float | None = None
    #: perf_counter() time by which scoring must end, when a budget applies.
    deadline: float | None = None
    deadline_hit: bool = False
    predicted_ms: float | None = None
    windows_scored: int = 0
    chunk_size: int | None = None
    cold: bool = False

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

    Give a :class:`~crossrank.RerankerConfig` or the same options as keywords (engine options
    by name, anything else goes to the backend)::

        reranker = Reranker("embedding", top_n=3)
        reranker = Reranker(config=RerankerConfig(backend="cohere", top_n=5))

    Construction is cheap: models load on the first call that has something to score, once
    per process (see :mod:`crossrank.registry`), so building a ``Reranker`` per request or
    per adapter is fine. A reranker pickles and deep-copies when its backend does (local
    models are shared through the registry, not copied); one that holds a token secret
    refuses to pickle rather than carry the key. ``close()`` / ``aclose()`` (or ``with`` /
    ``async with``) release the backend's connections.
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        *,
        config: RerankerConfig | None = None,
        **options: Any,
    ) -> None:
        if config is not None:
            if not isinstance(config, RerankerConfig):
                raise ConfigurationError(
                    f"config must be a RerankerConfig, got {type(config).__name__}; use "
                    "Reranker.from_config() for a saved dict"
                )
            if backend is not None or options:
                if backend is not None:
                    options["backend"] = backend
                config = config.replace(**options)
        else:
            config = RerankerConfig.from_options(backend, **options)
        self.config = config
        if isinstance(config.backend, str):
            self.backend: Backend = create_backend(config.backend, **config.backend_options)
        else:
            self.backend = config.backend
        self.normalizer = resolve_normalizer(config.normalization, temperature=config.temperature)
        selective = config.selective
        self.selective: SelectivePolicy = (
            parse_policy(selective) if isinstance(selective, str) else selective or AlwaysRerank()
        )
        self.blend = parse_blend(config.blend)
        self.window_aggregation: Aggregation = config.window_aggregation  # type: ignore[assignment]
        # Each fallback result is flagged; the log gets the first of a burst, not every one.
        self._fallback_warnings = WarningThrottle(logger)

    # Options read on every call, kept as attributes for readability at the call sites.
    top_n = property(lambda self: self.config.top_n)
    threshold = property(lambda self: self.config.threshold)
    windowing = property(lambda self: self.config.windowing)
    window_stride = property(lambda self: self.config.window_stride)
    deduplicate = property(lambda self: self.config.deduplicate)
    strict = property(lambda self: self.config.strict)

    # -- configuration ----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """``config.to_dict()``: JSON-able, credential-free, read back by :meth:`from_config`."""
        return self.config.to_dict()

    @classmethod
    def from_config(
        cls, config: RerankerConfig | Mapping[str, Any], **overrides: Any
    ) -> Reranker:
        """A reranker from a config or its saved dict; ``overrides`` win (e.g. ``api_key=``)."""
        if isinstance(config, RerankerConfig):
            return cls(config=config.replace(**overrides) if overrides else config)
        return cls(config=RerankerConfig.from_dict(config, **overrides))

    def __repr__(self) -> str:
        return (
            f"Reranker(backend={self.backend.name!r}, model={self.backend.model_name!r}, "
            f"normalization={self.normalizer.name!r}, top_n={self.top_n!r})"
        )

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the backend's connections (HTTP clients); the reranker stays usable."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`, for clients that belong to the running event loop."""
        aclose = getattr(self.backend, "aclose", None)
        if callable(aclose):
            await aclose()
        else:
            self.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Reranker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __reduce__(self) -> tuple[Any, ...]:
        # A backend given by name is rebuilt from the config (its model comes from the
        # registry); one given as an instance travels inside the config. Locks are new.
        return (_rebuild_reranker, (self.config,))

    # -- public API -------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        *,
        top_n: int | None = None,
        threshold: float | None = None,
        latency_budget_ms: float | None = None,
    ) -> RerankResult:
        """Rerank ``candidates`` (first-stage order) for ``query``; blocks while scoring.

        ``top_n``, ``threshold`` and ``latency_budget_ms`` override the config for this call.
        """
        call = self._prepare(query, candidates, top_n, threshold, latency_budget_ms)
        unscored = self._result_without_scoring(call)
        if unscored is not None:
            return unscored
        try:
            self._plan_windows(call)
            scoring_started = time.perf_counter()
            scored = 0
            parts: list[Sequence[float] | Ranking] = []
            for chunk in self._chunks(call):
                if not self._time_for(call, chunk):
                    break
                parts.append(self._score_chunk(call, chunk))
                scored = chunk.stop
            call.lap("score", scoring_started)
            return self._finish(call, parts, scored)
        except Exception as exc:  # a failing backend degrades to the first stage
            return self._fallback(call, exc)

    async def arerank(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        *,
        top_n: int | None = None,
        threshold: float | None = None,
        latency_budget_ms: float | None = None,
    ) -> RerankResult:
        """Async twin of :meth:`rerank`; the backend's ``ascore`` keeps the loop free."""
        call = self._prepare(query, candidates, top_n, threshold, latency_budget_ms)
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
            scored = 0
            parts: list[Sequence[float] | Ranking] = []
            for chunk in self._chunks(call):
                if not self._time_for(call, chunk):
                    break
                texts = call.windows.window_texts[chunk.start : chunk.stop]
                started = time.perf_counter()
                if call.deadline is None:
                    part = await self.backend.ascore(call.query, texts)
                else:
                    try:  # an API call is cut at the deadline; what was scored is kept
                        part = await asyncio.wait_for(
                            self.backend.ascore(call.query, texts),
                            max(call.deadline - started, 0.0),
                        )
                    except asyncio.TimeoutError:
                        call.deadline_hit = True
                        break
                self._observe(call, chunk, started)
                parts.append(part)
                scored = chunk.stop
            call.lap("score", scoring_started)
            return self._finish(call, parts, scored)
        except Exception as exc:
            return self._fallback(call, exc)

    # -- pipeline steps ---------------------------------------------------------------------

    def _prepare(
        self,
        query: str,
        candidates: Sequence[Candidate | str],
        top_n: int | None,
        threshold: float | None,
        latency_budget_ms: float | None = None,
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
            budget_ms=(
                check_latency_budget(latency_budget_ms)
                if latency_budget_ms is not None
                else self.config.latency_budget_ms
            ),
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
        """Cut long texts into windows; this may load the model, so it runs under fallback.

        Under a latency budget only the head that may fit is planned: tokenizing passages
        that will keep their first-stage place would spend the budget on nothing.
        """
        started = time.perf_counter()
        texts = [candidate.text for candidate in call.kept[: self._budget_depth(call)]]
        if self.windowing and isinstance(self.backend, TokenWindowing):
            call.windows = plan_windows(call.query, texts, self.backend, stride=self.window_stride)
        else:
            call.windows = no_windows(texts)
        call.lap("windows", started)

    def _backend_stats(self) -> Mapping[str, Any] | None:
        # Read in the thread or task that scored: such stats live in a context variable.
        call_stats = getattr(self.backend, "call_stats", None)
        stats = call_stats() if callable(call_stats) else None
        return stats if isinstance(stats, Mapping) else None

    def _budget_outcome(self, call: _Call, reranked: int) -> BudgetOutcome | None:
        if call.budget_ms is None:
            return None
        return BudgetOutcome(
            budget_ms=call.budget_ms,
            reranked=reranked,
            kept_in_first_stage_order=len(call.kept) - reranked,
            predicted_ms=call.predicted_ms,
            scoring_ms=call.timings_ms.get("score", 0.0),
            deadline_hit=call.deadline_hit,
        )

    # -- scoring under a latency budget ------------------------------------------------------

    def _budget_depth(self, call: _Call) -> int:
        """How many first-stage candidates the budget may allow (all without one)."""
        if call.budget_ms is None:
            return len(call.kept)
        call.deadline = call.started + call.budget_ms / 1000.0
        model = cost_model_for(self.backend)
        cap = chunk_size_of(self.backend)
        if getattr(self.backend, "returns_ranks", False):
            return len(call.kept)
        if not model.ready:  # nothing learned yet: growing steps, each one teaching the model
            call.cold = True
            return len(call.kept)
        remaining_ms = (call.deadline - time.perf_counter()) * 1000.0
        lengths = [len(call.query) + len(candidate.text) for candidate in call.kept]
        size = chunk_size_for(
            model, sum(lengths) / len(lengths), call.budget_ms * CHUNK_SHARE, cap
        )
        call.chunk_size = size
        depth = 0
        for chunk in chunks(len(lengths), size):
            planned = [sum(lengths[index] for index in part) for part in chunks(chunk.stop, size)]
            predicted = model.predict(planned)
            if predicted is None or predicted > remaining_ms:
                break
            depth, call.predicted_ms = chunk.stop, predicted
        if depth == 0:
            model.relax()  # so a model that learned a slow spell cannot refuse forever
        return depth

    def _chunks(self, call: _Call) -> list[range]:
        """Window ranges to score in order: all at once, or in chunks under a budget."""
        count = len(call.windows.window_texts)
        if call.budget_ms is None:
            return [range(count)]
        # A listwise backend ranks what it is given together: its ranks split across calls
        # would not compare, so it gets one call for everything.
        if getattr(self.backend, "returns_ranks", False):
            return [range(count)]
        if call.cold:
            return growing_chunks(count, chunk_size_of(self.backend))
        return chunks(count, call.chunk_size or chunk_size_of(self.backend))

    def _time_for(self, call: _Call, chunk: range) -> bool:
        """Whether ``chunk`` can still be scored before the deadline (always, without one)."""
        if call.deadline is None:
            return True
        remaining_ms = (call.deadline - time.perf_counter()) * 1000.0
        predicted = cost_model_for(self.backend).predict([self._characters(call, chunk)])
        if remaining_ms <= 0 or (predicted is not None and predicted > remaining_ms):
            call.deadline_hit = True
            return False
        return True

    def _score_chunk(self, call: _Call, chunk: range) -> Sequence[float] | Ranking:
        started = time.perf_counter()
        part = self.backend.score(call.query, call.windows.window_texts[chunk.start : chunk.stop])
        self._observe(call, chunk, started)
        return part

    def _observe(self, call: _Call, chunk: range, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        cost_model_for(self.backend).observe(self._characters(call, chunk), elapsed_ms)

    @staticmethod
    def _characters(call: _Call, chunk: range) -> int:
        texts = call.windows.window_texts
        return sum(len(call.query) + len(texts[index]) for index in chunk)

    def _finish(
        self, call: _Call, parts: Sequence[Sequence[float] | Ranking], scored_windows: int
    ) -> RerankResult:
        """Aggregate, blend and normalize the scored head; the rest keeps first-stage order."""
        started = time.perf_counter()
        window_scores: list[float] = []
        for part in parts:
            if isinstance(part, Ranking):
                part = scores_from_ranks(part.ranks)
                call.scored_from_ranks = True
            window_scores.extend(_checked_scores(part, len(part), self.backend.name))
        _checked_scores(window_scores, scored_windows, self.backend.name)
        owners = call.windows.owners
        planned = call.windows.candidate_count
        # A candidate counts as reranked only when every one of its windows was scored.
        head = planned if scored_windows == len(owners) else owners[scored_windows]
        if head == 0:
            return self._first_stage_result(call, "skipped")
        head_windows = len(owners) if head == planned else owners.index(head)
        call.windows_scored = head_windows
        plan = WindowPlan(call.windows.window_texts[:head_windows], owners[:head_windows], head)
        raw = aggregate(plan, window_scores[:head_windows], self.window_aggregation)
        if self.blend is not None:
            first_stage_ranks = list(range(1, head + 1))
            first_stage_scores = [candidate.first_stage_score for candidate in call.kept[:head]]
            raw = self.blend.combine(first_stage_ranks, first_stage_scores, raw)
        normalized = [float(value) for value in self.normalizer(np.asarray(raw, dtype=np.float64))]
        # Stable sort: equal scores keep first-stage order, so results are deterministic.
        order = sorted(range(head), key=lambda index: -raw[index])
        tail = list(range(head, len(call.kept)))
        if tail:
            floor = self.normalizer.bounds[0]
            floor = floor if math.isfinite(floor) else min(normalized)
            normalized += [floor] * len(tail)
        call.lap("normalize", started)
        return self._build(
            call,
            "reranked",
            order=order + tail,
            raw_scores=[*raw, *([None] * len(tail))],
            normalized=normalized,
            reranked_count=head,
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
        raw_scores: Sequence[float | None] | None,
        normalized: list[float],
        normalization: str | None = None,
        error: str | None = None,
        reranked_count: int = 0,
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
                    raw_score=_optional_float(None if raw_scores is None else raw_scores[position]),
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
            pairs_scored=reranked_count if scored else 0,
            windows_scored=call.windows_scored if scored else 0,
            duplicates=call.duplicates,
            selective=call.decision,
            blend=self.blend.name if (self.blend is not None and scored) else None,
            error=error,
            timings_ms=dict(call.timings_ms),
            scores_from_ranks=call.scored_from_ranks and scored,
            budget=self._budget_outcome(call, reranked_count),
            backend_stats=self._backend_stats() if status in ("reranked", "fallback") else None,
        )
        return RerankResult(query=call.query, ranked=tuple(ranked), report=report)


# Normalizations that mean the same on any score scale, first-stage scores included.
_SCALE_FREE_NORMALIZERS = (Softmax, Sigmoid, MinMax, Identity)

def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _rebuild_reranker(config: RerankerConfig) -> Reranker:
    return Reranker(config=config)


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
