"""Summaries of an evaluation: the metrics table, the JSON document, and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.eval.metrics import METRICS, cutoff_metrics, mean_metrics, per_query_metrics
from crossrank.eval.runner import Evaluation, RunResult


def reported_metrics(top_k: int = 10) -> list[str]:
    """The fixed metrics every report carries, then nDCG/MRR/Recall at ``top_k`` if not there.

    The fixed set keeps JSON reports comparable across runs; ``top_k`` is the number of
    passages the application actually hands on (an LLM prompt's 3-5, say), so its cut-off is
    the one that says what a user will see.
    """
    names = list(METRICS)
    return names + [name for name in cutoff_metrics(top_k) if name not in names]


def run_summary(evaluation: Evaluation, run: RunResult, *, top_k: int = 10) -> dict[str, Any]:
    """One row of the JSON ``runs`` list."""
    metrics = mean_metrics(
        per_query_metrics(evaluation.collection.qrels, run.rankings, reported_metrics(top_k))
    )
    latencies = np.asarray(list(run.latency_ms.values()), dtype=np.float64)
    return {
        "name": run.spec.name,
        **{name: round(value, 4) for name, value in metrics.items()},
        "skip_rate": round(run.skip_rate, 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "pairs_scored": run.total_pairs,
        "queries": len(run.rankings),
    }


def summary_document(evaluation: Evaluation, *, top_k: int = 10) -> dict[str, Any]:
    return {
        "dataset": evaluation.collection.name,
        "first_stage": evaluation.first_stage,
        "depth": evaluation.depth,
        "top_k": top_k,
        "runs": [run_summary(evaluation, run, top_k=top_k) for run in evaluation.runs.values()],
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table (numbers to 3 decimals, rates as percentages)."""

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            if column == "skip_rate":
                return f"{value:.0%}"
            if column.endswith("_ms"):
                return f"{value:.1f}"
            return f"{value:.3f}"
        return str(value)

    body = [[cell(column, row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in body)) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True))
        for line in body
    ]
    return "\n".join(lines)


TABLE_COLUMNS = (
    "name",
    *METRICS,
    "skip_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "pairs_scored",
)


def table_columns(top_k: int = 10) -> tuple[str, ...]:
    """:data:`TABLE_COLUMNS` with the ``top_k`` cut-off metrics after the fixed ones."""
    extra = tuple(reported_metrics(top_k)[len(METRICS) :])
    split = 1 + len(METRICS)
    return TABLE_COLUMNS[:split] + extra + TABLE_COLUMNS[split:]


def plot(
    path: str | Path,
    *,
    title: str,
    depth_curve: Sequence[tuple[int, float]],
    first_stage_ndcg: float,
    skip_curves: Mapping[str, Sequence[tuple[float, float]]],
) -> None:
    """Two panels: nDCG@10 against rerank depth, and nDCG@10 against skip rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if depth_curve:
        depths, values = zip(*depth_curve, strict=True)
        left.plot(depths, values, marker="o", label="reranked")
    left.axhline(first_stage_ndcg, color="grey", linestyle="--", label="first stage")
    left.set_xlabel("rerank depth N")
    left.set_ylabel("nDCG@10")
    left.set_title("quality vs rerank depth")
    left.legend()
    for name, curve in skip_curves.items():
        if curve:
            rates, values = zip(*sorted(curve), strict=True)
            right.plot(rates, values, marker=".", label=name)
    right.axhline(first_stage_ndcg, color="grey", linestyle="--", label="first stage")
    right.set_xlabel("skip rate")
    right.set_ylabel("nDCG@10")
    right.set_title("quality vs skip rate")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
