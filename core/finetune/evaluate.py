"""Before/after evaluation: rerank BM25's top documents of held-out queries, score nDCG@10.

A model is evaluated from its saved path through crossrank's own ``Reranker`` at its
defaults (texts longer than the model's window are scored in overlapping token windows,
best window kept), so the number printed after fine-tuning is the number a user gets when
they load the folder.
nDCG comes from :mod:`crossrank.eval.metrics` (gain 2^rel - 1, as in the reference table of
the shared collections), so these numbers agree with ``crossrank eval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossrank.blend import Blend
from crossrank.eval.beir import BeirCollection
from crossrank.eval.metrics import mean_metrics, per_query_metrics
from crossrank.finetune.miners import BM25Miner

Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class FirstStageRun:
    """BM25's top-``depth`` (doc id, score) lists for some queries of one collection."""

    collection: BeirCollection
    hits: Mapping[str, Sequence[tuple[str, float]]]


def first_stage_run(
    collection: BeirCollection, bm25: BM25Miner, query_ids: Sequence[str], *, depth: int
) -> FirstStageRun:
    return FirstStageRun(
        collection=collection,
        hits={
            query_id: bm25.search(collection.queries[query_id], k=depth) for query_id in query_ids
        },
    )


def ndcg_at_10(collection: BeirCollection, run: Run) -> float:
    """Mean nDCG@10 over the run's judged queries (a query with no retrieved document scores 0)."""
    query_ids = [query_id for query_id in run if collection.qrels.get(query_id)]
    if not query_ids:
        return 0.0
    rankings = {
        query_id: sorted(run[query_id], key=run[query_id].__getitem__, reverse=True)
        for query_id in query_ids
    }
    per_query = per_query_metrics(collection.qrels, rankings, metrics=("ndcg@10",))
    return mean_metrics(per_query)["ndcg@10"]


def bm25_run(first_stage: FirstStageRun) -> Run:
    return {query_id: dict(hits) for query_id, hits in first_stage.hits.items()}


def blended_run(first_stage: FirstStageRun, reranked: Run, blend: Blend) -> Run:
    """``reranked`` fused with BM25's scores exactly as ``Reranker(blend=...)`` fuses them.

    A small fine-tuned model often loses to BM25 alone yet beats it blended (BM25 keeps the
    exact-term evidence the model has not learned), so the evaluation reports both.
    """
    blended: Run = {}
    for query_id, hits in first_stage.hits.items():
        doc_ids = [doc_id for doc_id, _score in hits]
        combined = blend.combine(
            list(range(1, len(doc_ids) + 1)),
            [score for _doc_id, score in hits],
            [reranked[query_id][doc_id] for doc_id in doc_ids],
        )
        blended[query_id] = dict(zip(doc_ids, combined, strict=True))
    return blended


def reranked_run(
    first_stage: FirstStageRun,
    scorer: Any,
    *,
    progress: bool = False,
    description: str = "rerank",
) -> Run:
    """Score every (query, hit) with ``scorer`` (a crossrank Backend) and keep those scores."""
    corpus = first_stage.collection.corpus
    queries = first_stage.collection.queries
    items: Any = first_stage.hits.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(first_stage.hits), desc=description, unit="query")
    run: Run = {}
    for query_id, hits in items:
        doc_ids = [doc_id for doc_id, _score in hits]
        scores = scorer.score(queries[query_id], [corpus[doc_id].full_text for doc_id in doc_ids])
        run[query_id] = dict(zip(doc_ids, (float(score) for score in scores), strict=True))
    return run


class RerankerScorer:
    """Raw scores for every text, computed the way ``Reranker.rerank`` computes them.

    Strict, so a broken model fails the evaluation instead of scoring as the first stage;
    no deduplication, so every document of the run gets its own score.
    """

    def __init__(self, backend: Any, *, windowing: bool) -> None:
        from crossrank import Reranker

        self.reranker = Reranker(
            backend, normalization="raw", windowing=windowing, deduplicate=False, strict=True
        )

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        result = self.reranker.rerank(query, list(texts))
        scores: list[float | None] = [None] * len(texts)
        for item in result.ranked:
            scores[item.input_index] = item.raw_score
        missing = [index for index, score in enumerate(scores) if score is None]
        if missing:
            raise RuntimeError(f"the reranker returned no score for texts {missing[:5]}")
        return [float(score) for score in scores if score is not None]


def model_scorer(
    model_path: str, *, device: str = "auto", batch_size: int = 32, windowing: bool = True
) -> RerankerScorer:
    """A scorer on a private registry, so an evaluated model is freed after use."""
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from crossrank.registry import ModelRegistry

    backend = CrossEncoderBackend(
        model_path,
        device=device,
        batch_size=batch_size,
        local_files_only=True,
        registry=ModelRegistry(),
    )
    return RerankerScorer(backend, windowing=windowing)
