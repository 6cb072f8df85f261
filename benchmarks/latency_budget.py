"""Latency budgets on real collections: how close to the budget, how deep, at what quality.

For each shared collection (../shared/data), BM25's top ``--depth`` candidates of each judged
query are reranked by the reference cross-encoder and by the embedding rescorer, under each
budget and unlimited, by ``--concurrency`` closed-loop clients. Printed per backend, budget
and concurrency: p50 / p95 / p99 latency of the whole rerank call, the share of partial
results, the mean depth reranked, and nDCG@10 next to the unlimited run's. A plot of nDCG@10
against budget is written with ``--plot``.

    python benchmarks/latency_budget.py --max-queries 15 --plot docs/latency_budget.png

The cost model is per process and learns from every call; each backend is warmed up with
unbudgeted calls first, as a serving process would be.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local_workload import model_path, print_header

from crossrank import Candidate, Reranker
from crossrank.backends.local.cpu import feature_key
from crossrank.eval.beir import load_beir
from crossrank.eval.first_stage import FirstStage
from crossrank.eval.metrics import per_query_metrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNLIMITED = 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


Row = tuple[str, str, str, list[Candidate], dict[str, int]]


def workload(depth: int, max_queries: int) -> list[Row]:
    """(collection, query id, query, BM25 candidates, its judgments) per judged query."""
    rows: list[Row] = []
    for folder in sorted(path for path in DATA.iterdir() if (path / "corpus.jsonl").is_file()):
        collection = load_beir(folder)
        first_stage = FirstStage(collection, "bm25")
        judged = [qid for qid in collection.queries if collection.qrels.get(qid)][:max_queries]
        for query_id in judged:
            query = collection.queries[query_id]
            candidates = first_stage.retrieve(query, k=depth)
            judgments = dict(collection.qrels[query_id])
            rows.append((folder.name, query_id, query, candidates, judgments))
    return rows


def run(reranker: Reranker, rows: list[Row], budget_ms: float, concurrency: int) -> dict[str, Any]:
    def one(row: Row) -> tuple[float, Any]:
        started = time.perf_counter()
        result = reranker.rerank(row[2], row[3], latency_budget_ms=budget_ms or None)
        return (time.perf_counter() - started) * 1000.0, result

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, rows))
    latencies = [latency for latency, _ in outcomes]
    results = [result for _, result in outcomes]
    depths = [
        result.report.budget.reranked if result.report.budget else len(result)
        for result in results
    ]
    per_collection: dict[str, tuple[dict[str, list[str]], dict[str, dict[str, int]]]] = {}
    for (collection, query_id, _, _, judged), result in zip(rows, results, strict=True):
        rankings, qrels = per_collection.setdefault(collection, ({}, {}))
        rankings[query_id] = [str(item.id) for item in result]
        qrels[query_id] = judged
    ndcgs = [
        statistics.mean(per_query_metrics(qrels, rankings, ["ndcg@10"])["ndcg@10"].values())
        for rankings, qrels in per_collection.values()
    ]
    return {
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "partial": sum(result.report.partial for result in results) / len(results),
        "skipped": sum(result.report.status == "skipped" for result in results) / len(results),
        "depth": statistics.mean(depths),
        "ndcg": statistics.mean(ndcgs),  # macro over collections
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--max-queries", type=int, default=15, help="judged queries per collection")
    parser.add_argument("--budgets", type=float, nargs="+", default=[50, 100, 200, 500, UNLIMITED])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backends", nargs="+", default=["cross-encoder", "embedding"])
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs the shared collections at {DATA}")

    print(f"CPU: {platform.processor() or platform.machine()} [{feature_key()}], "
          f"{os.cpu_count()} cores")
    rows = workload(args.depth, args.max_queries)
    print(f"{len(rows)} queries, BM25 top {args.depth}")
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for backend in args.backends:
        options: dict[str, Any] = {"top_n": None}
        if backend == "cross-encoder":
            options["model"] = model_path()[0]
        reranker = Reranker(backend, **options)
        for row in rows[:8]:  # warm-up: load the model, seed the cost model
            reranker.rerank(row[2], row[3])
        print()
        print_header(
            f"{'backend':<14}{'budget ms':>10}{'conc':>6}{'p50':>9}{'p95':>9}{'p99':>9}"
            f"{'partial':>9}{'skipped':>9}{'depth':>7}{'nDCG@10':>9}{'vs unl.':>9}"
        )
        for concurrency in args.concurrency:
            measured = {budget: run(reranker, rows, budget, concurrency) for budget in args.budgets}
            reference = measured.get(UNLIMITED) or run(reranker, rows, UNLIMITED, concurrency)
            for budget, row in measured.items():
                label = "unlimited" if budget == UNLIMITED else f"{budget:.0f}"
                print(
                    f"{backend:<14}{label:>10}{concurrency:>6}{row['p50']:>9.1f}{row['p95']:>9.1f}"
                    f"{row['p99']:>9.1f}{row['partial']:>9.0%}{row['skipped']:>9.0%}"
                    f"{row['depth']:>7.1f}{row['ndcg']:>9.4f}"
                    f"{row['ndcg'] - reference['ndcg']:>+9.4f}"
                )
                if budget != UNLIMITED:
                    curves.setdefault((backend, concurrency), []).append((budget, row["ndcg"]))
            curves.setdefault((backend, concurrency), []).append(
                (max(args.budgets) * 2, reference["ndcg"])
            )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for (backend, concurrency), points in sorted(curves.items()):
            points.sort()
            axis.plot(*zip(*points, strict=True), marker="o", label=f"{backend}, c={concurrency}")
        axis.set_xscale("log")
        axis.set_xlabel("latency budget (ms; rightmost point: unlimited)")
        axis.set_ylabel("nDCG@10 (macro over collections)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
