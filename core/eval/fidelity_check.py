"""The fidelity rule applied to real scorers on judged collections.

``crossrank.eval.fidelity_rule`` judges per-query nDCG@10 that someone already computed; this
module computes them the way the rule is stated: for each judged query of each collection,
BM25's top :data:`FIRST_STAGE_DEPTH` reranked by the reference (fp32) and by the faster
variant. ``crossrank optimize --judged`` runs it on the variant ``precision="auto"`` chose, so
the choice a server loads has passed the rule on the user's own judged data, not only the
per-query gate on a small sample; ``benchmarks/local_backend.py`` runs it on the shared
collections.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crossrank.eval.fidelity_rule import FidelityVerdict, judge_fidelity

#: First-stage candidates per query, as the rule is stated (BM25 top 30).
FIRST_STAGE_DEPTH = 30

#: Scores one query's candidate texts (a backend's ``score`` method fits).
Scorer = Callable[[str, list[str]], Sequence[float]]
#: collection -> scorer name -> query id -> nDCG@10.
PerQueryNdcg = dict[str, dict[str, dict[str, float]]]


def bm25_candidates(
    collection: Any, query_ids: Iterable[str], *, depth: int = FIRST_STAGE_DEPTH
) -> dict[str, list[str]]:
    """BM25's top ``depth`` document ids per query of a loaded BEIR ``collection``: the
    candidates every comparison under the rule reranks."""
    from crossrank.eval.bm25 import BM25Index

    doc_ids = list(collection.corpus)
    index = BM25Index([collection.corpus[d].full_text for d in doc_ids])
    return {
        query_id: [
            doc_ids[hit.index] for hit in index.search(collection.queries[query_id], k=depth)
        ]
        for query_id in query_ids
    }


def rerank_ndcg(
    directories: Iterable[str | Path],
    scorers: Mapping[str, Scorer],
    *,
    depth: int = FIRST_STAGE_DEPTH,
    queries_per_collection: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> PerQueryNdcg:
    """nDCG@10 per judged query of each BEIR folder, for BM25's top ``depth`` as ranked by
    each scorer (and by BM25 itself, under ``"bm25"``). ``queries_per_collection`` samples
    that many judged queries (``None``: every one, as the rule asks)."""
    from crossrank.eval.beir import load_beir
    from crossrank.eval.metrics import per_query_metrics

    table: PerQueryNdcg = {}
    for directory in directories:
        collection = load_beir(directory)
        judged = collection.judged_query_ids
        if queries_per_collection is not None:
            judged = random.Random(seed).sample(judged, min(queries_per_collection, len(judged)))
        rankings: dict[str, dict[str, list[str]]] = {name: {} for name in ("bm25", *scorers)}
        for query_id, candidates in bm25_candidates(collection, judged, depth=depth).items():
            query = collection.queries[query_id]
            texts = [collection.corpus[d].full_text for d in candidates]
            rankings["bm25"][query_id] = candidates
            for name, score in scorers.items():
                scores = list(score(query, texts)) if texts else []
                order = sorted(range(len(texts)), key=lambda i: -scores[i])
                rankings[name][query_id] = [candidates[i] for i in order]
        table[collection.name] = {
            name: per_query_metrics(collection.qrels, ranked, ["ndcg@10"])["ndcg@10"]
            for name, ranked in rankings.items()
            if ranked
        }
        if progress is not None:
            progress(f"{collection.name}: {len(judged)} judged queries reranked")
    return table


def judge_table(table: PerQueryNdcg, *, reference: str, variant: str) -> FidelityVerdict:
    """The rule for ``variant`` against ``reference`` on a :func:`rerank_ndcg` table."""
    return judge_fidelity(
        {collection: rows[reference] for collection, rows in table.items() if rows},
        {collection: rows[variant] for collection, rows in table.items() if rows},
    )


def judge_scorers(
    directories: Sequence[str | Path],
    *,
    reference: Scorer,
    variant: Scorer,
    depth: int = FIRST_STAGE_DEPTH,
    progress: Callable[[str], None] | None = None,
) -> FidelityVerdict:
    """Whether ``variant`` may stand in for ``reference``: the rule on every judged query."""
    table = rerank_ndcg(
        directories,
        {"reference": reference, "variant": variant},
        depth=depth,
        progress=progress,
    )
    return judge_table(table, reference="reference", variant="variant")


__all__ = ["FIRST_STAGE_DEPTH", "bm25_candidates", "judge_scorers", "judge_table", "rerank_ndcg"]
