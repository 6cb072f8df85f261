"""One selective policy and threshold for all the shared collections, picked and judged on halves.

``eval_collections.py`` tunes a threshold per collection; with 15-110 queries per half a
collection's threshold is noisy. Here every collection's queries are split in halves as
there (``split_queries``, by seed), the halves are pooled, and one threshold per policy is
picked on the pooled half A: the best mean nDCG@10 among thresholds that skip at least
30% of half A. Half B reports its skip rate and its nDCG@10 change against always
reranking, over all queries (micro) and as the mean of per-collection numbers (macro).
Several seeds show how much the outcome depends on the split.

Needs ``eval_collections.py`` to have scored the backend first (it reads the score caches
in ``.cache/eval``); BM25 first stage, depth 30. ``--against`` picks the always-rerank run
that skipping is judged against: the backend alone, or the backend blended with BM25, which
is how a fine-tuned model is served. Run::

    python benchmarks/selective_pooled.py --backend embedding --seeds 0 1 2 3
    python benchmarks/selective_pooled.py --backend finetuned --against blend:weighted:0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_collections as collections_benchmark

from crossrank.backends.local.cpu import cpu_description
from crossrank.eval.tune import RERANKED_RUN

TARGET_SKIP = 0.3
POLICIES = ("margin", "entropy")


def per_query_table(backend_name: str, against: str) -> dict[str, np.ndarray]:
    """Per query: collection, id, first-stage and reranked nDCG@10, and each policy's signal.

    Nothing here depends on the split, so every seed reads the same table (see ``half_a``).
    """
    from crossrank.eval.beir import load_beir
    from crossrank.eval.first_stage import FirstStage
    from crossrank.eval.runner import caching, evaluate_runs
    from crossrank.eval.tune import FIRST_STAGE_RUN, ndcg_per_run, tuning_specs
    from crossrank.selective import EntropyPolicy, MarginPolicy

    probes = {"margin": MarginPolicy(threshold=0.0), "entropy": EntropyPolicy(threshold=0.0)}
    cache = collections_benchmark.REPO / ".cache" / "eval"
    backend = caching(collections_benchmark.backends()[backend_name])
    columns: dict[str, list] = {"collection": [], "query_id": [], "first": [], "reranked": []}
    columns.update({kind: [] for kind in POLICIES})
    for name in collections_benchmark.COLLECTIONS:
        collection = load_beir(collections_benchmark.DATA / name)
        backend._scores.clear()
        collections_benchmark.load_cache(
            backend, collections_benchmark.score_cache_path(cache, name, backend_name, backend)
        )
        evaluation = evaluate_runs(
            collection,
            FirstStage(collection, "bm25", cache_dir=cache),
            tuning_specs(),
            depth=30,
            backend=backend,
            query_ids=collections_benchmark.unseen_queries(backend_name, name),
        )
        ndcg = ndcg_per_run(evaluation)
        for query_id in evaluation.query_ids:
            columns["collection"].append(name)
            columns["query_id"].append(query_id)
            columns["first"].append(ndcg[FIRST_STAGE_RUN][query_id])
            columns["reranked"].append(ndcg[against][query_id])
            for kind, probe in probes.items():
                signal = probe.signal(collection.queries[query_id], evaluation.heads[query_id])
                columns[kind].append(np.nan if signal is None else signal)
    return {key: np.asarray(values) for key, values in columns.items()}


def half_a(table: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """Which rows fall in half A when each collection's queries are split by ``seed``."""
    from crossrank.eval.runner import split_queries

    mask = np.zeros(len(table["query_id"]), dtype=bool)
    for name in np.unique(table["collection"]):
        rows = np.flatnonzero(table["collection"] == name)
        chosen = set(split_queries(list(table["query_id"][rows]), seed=seed)[0])
        mask[rows] = [query_id in chosen for query_id in table["query_id"][rows]]
    return mask


def skip_and_change(
    table: dict[str, np.ndarray], skip: np.ndarray, rows: np.ndarray, *, macro: bool
) -> tuple[float, float]:
    """Skip rate and nDCG@10 change vs always reranking (points) over ``rows``."""
    chosen = np.where(skip, table["first"], table["reranked"])
    groups = (
        [rows & (table["collection"] == name) for name in np.unique(table["collection"])]
        if macro
        else [rows]
    )
    skips = [skip[group].mean() for group in groups]
    changes = [100 * (chosen[group].mean() - table["reranked"][group].mean()) for group in groups]
    return float(np.mean(skips)), float(np.mean(changes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="embedding")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument(
        "--against",
        default=RERANKED_RUN,
        help="the always-rerank run skips are judged against: 'reranked' (the backend alone) "
        "or a blend run such as 'blend:weighted:0.5' (the backend blended with BM25)",
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}", flush=True)
    if not collections_benchmark.DATA.is_dir():
        print(f"needs the shared collections at {collections_benchmark.DATA}", file=sys.stderr)
        return 1
    from crossrank.selective import EntropyPolicy, MarginPolicy

    skips_above = {
        "margin": MarginPolicy.skip_when == "above",
        "entropy": EntropyPolicy.skip_when == "above",
    }
    print(
        "| seed | average | policy | threshold (from A) | skipped on B | vs always on B (points) |"
    )
    print("|---:|---|---|---:|---:|---:|")
    table = per_query_table(args.backend, args.against)
    for seed in args.seeds:
        in_a = half_a(table, seed)
        for macro in (False, True):
            for kind in POLICIES:
                signal = table[kind]
                known = ~np.isnan(signal)
                best: tuple[float, float, np.ndarray] | None = None
                for threshold in np.unique(signal[in_a & known]):
                    compare = signal >= threshold if skips_above[kind] else signal <= threshold
                    skip = known & compare
                    skipped, change = skip_and_change(table, skip, in_a, macro=macro)
                    if skipped >= TARGET_SKIP and (best is None or change > best[1]):
                        best = (float(threshold), change, skip)
                if best is None:
                    continue
                skipped, change = skip_and_change(table, best[2], ~in_a, macro=macro)
                print(
                    f"| {seed} | {'macro' if macro else 'micro'} | {kind} | {best[0]:.4f} | "
                    f"{skipped:.1%} | {change:+.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
