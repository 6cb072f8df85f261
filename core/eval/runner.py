"""Running first-stage, reranked, selective and blended configurations over a collection.

The expensive part of an evaluation is the backend's scoring, and every configuration that
reranks the same candidates needs the same scores. :func:`caching` puts the backend behind
an unbounded :class:`~crossrank.backends.wrappers.CachedBackend`, which scores each (query,
text) pair once per process and remembers what it cost; when a later configuration reuses a
score, that configuration is charged the time the scoring originally took, so reported
latencies are what a configuration would cost on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crossrank.backends.base import Backend
from crossrank.backends.wrappers import CachedBackend
from crossrank.blend import Blend
from crossrank.engine import Reranker
from crossrank.eval.beir import BeirCollection
from crossrank.eval.first_stage import FirstStage
from crossrank.selective import AlwaysRerank, SelectivePolicy
from crossrank.types import Candidate


def caching(backend: Backend) -> CachedBackend:
    """``backend`` behind an unbounded score cache (itself, if it already is one)."""
    if isinstance(backend, CachedBackend):
        return backend
    return CachedBackend(backend, max_entries=None)


@dataclass(frozen=True)
class RunSpec:
    """One configuration to evaluate: first stage only, or the reranker with options."""

    name: str
    rerank: bool = True
    selective: SelectivePolicy | None = None
    blend: Blend | str | None = None
    depth: int | None = None  # None: the evaluation's depth


@dataclass
class RunResult:
    """Per-query outcome of one configuration."""

    spec: RunSpec
    rankings: dict[str, list[str]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    pairs_scored: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, bool] = field(default_factory=dict)
    signals: dict[str, float | None] = field(default_factory=dict)
    #: raw reranker scores of the reranked head: {query id: {doc id: raw score}}
    raw_scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def skip_rate(self) -> float:
        return sum(self.skipped.values()) / len(self.skipped) if self.skipped else 0.0

    @property
    def total_pairs(self) -> int:
        return sum(self.pairs_scored.values())


@dataclass
class Evaluation:
    """Everything measured on one collection with one first stage."""

    collection: BeirCollection
    first_stage: str
    depth: int
    query_ids: list[str]
    heads: dict[str, list[Candidate]]
    runs: dict[str, RunResult]


RECALL_DEPTH = 100


def evaluate_runs(
    collection: BeirCollection,
    first_stage: FirstStage,
    specs: Sequence[RunSpec],
    *,
    depth: int,
    backend: Backend | None,
    query_ids: Iterable[str] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Run every spec on every judged query; reranked runs keep the first-stage tail."""
    if backend is None and any(spec.rerank for spec in specs):
        raise ValueError("reranking runs need a backend")
    cached = caching(backend) if backend is not None else None
    rerankers: dict[str, Reranker] = {}
    for spec in specs:
        if spec.rerank and cached is not None:
            rerankers[spec.name] = Reranker(
                cached, selective=spec.selective or AlwaysRerank(), blend=spec.blend
            )
    ids = list(query_ids) if query_ids is not None else collection.judged_query_ids
    results = {spec.name: RunResult(spec=spec) for spec in specs}
    heads: dict[str, list[Candidate]] = {}
    iterator: Iterable[str] = ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ids, desc=f"{collection.name}/{first_stage.method}", unit="query")
    for query_id in iterator:
        query = collection.queries[query_id]
        started = time.perf_counter()
        candidates = first_stage.retrieve(query, k=max(depth, RECALL_DEPTH))
        first_stage_ms = (time.perf_counter() - started) * 1000.0
        heads[query_id] = candidates[:depth]
        for spec in specs:
            result = results[spec.name]
            if not spec.rerank:
                result.rankings[query_id] = [str(c.id) for c in candidates]
                result.latency_ms[query_id] = first_stage_ms
                result.pairs_scored[query_id] = 0
                result.skipped[query_id] = True
                continue
            assert cached is not None
            run_depth = spec.depth or depth
            head, tail = candidates[:run_depth], candidates[run_depth:]
            cached.last_replayed_ms = 0.0
            call_started = time.perf_counter()
            reranked = rerankers[spec.name].rerank(query, head) if head else None
            call_ms = (time.perf_counter() - call_started) * 1000.0 + cached.last_replayed_ms
            ranking = [str(doc_id) for doc_id in reranked.ids] if reranked is not None else []
            result.rankings[query_id] = ranking + [str(c.id) for c in tail]
            result.latency_ms[query_id] = first_stage_ms + call_ms
            report = reranked.report if reranked is not None else None
            result.pairs_scored[query_id] = report.pairs_scored if report else 0
            result.skipped[query_id] = bool(report and report.status == "skipped")
            decision = report.selective if report else None
            result.signals[query_id] = decision.signal if decision else None
            if reranked is not None and report is not None and report.reranked:
                result.raw_scores[query_id] = {
                    str(item.id): float(item.raw_score)
                    for item in reranked
                    if item.raw_score is not None
                }
    return Evaluation(
        collection=collection,
        first_stage=first_stage.method,
        depth=depth,
        query_ids=ids,
        heads=heads,
        runs=results,
    )


def split_queries(query_ids: Sequence[str], *, seed: int = 0) -> tuple[list[str], list[str]]:
    """A reproducible random half/half split (tuning half, held-out half)."""
    import numpy as np

    order = list(query_ids)
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(len(order))
    half = (len(order) + 1) // 2
    tune = sorted((order[i] for i in permutation[:half]), key=order.index)
    held = sorted((order[i] for i in permutation[half:]), key=order.index)
    return tune, held


def relevance_labels(
    qrels: Mapping[str, Mapping[str, int]],
    raw_scores: Mapping[str, Mapping[str, float]],
    query_ids: Iterable[str],
) -> tuple[list[float], list[int]]:
    """Pooled (raw score, relevant?) pairs of the given queries, for calibration."""
    scores: list[float] = []
    labels: list[int] = []
    for query_id in query_ids:
        judged = qrels.get(query_id, {})
        for doc_id, score in raw_scores.get(query_id, {}).items():
            scores.append(score)
            labels.append(1 if judged.get(doc_id, 0) > 0 else 0)
    return scores, labels
