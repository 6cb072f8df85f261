"""``crossrank eval``: first stage vs reranked vs selective vs blended runs on a BEIR folder.

Prints a table, optionally writes a JSON summary (``--json``), draws quality against rerank
depth and skip rate (``--plot``), compares runs with paired significance tests per
query-length segment (``--compare``), and fits/evaluates a calibrator (``--calibrate``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.backends.base import Backend
from crossrank.eval.beir import BeirCollection, load_beir
from crossrank.eval.bm25 import BM25_PRESETS
from crossrank.eval.first_stage import FIRST_STAGES, FirstStage
from crossrank.eval.runner import Evaluation, RunSpec


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a BEIR-layout folder")
    parser.add_argument("--split", default="test", help="qrels split (qrels/<split>.tsv)")
    parser.add_argument("--first-stage", choices=FIRST_STAGES, default="bm25")
    parser.add_argument(
        "--bm25-preset",
        choices=BM25_PRESETS,
        default="default",
        help="'reference' reproduces the shared collections' README BM25 table (weaker)",
    )
    parser.add_argument("--depth", type=int, default=100, help="candidates reranked per query")
    parser.add_argument("--backend", help="reranker backend name (e.g. cross-encoder, embedding)")
    parser.add_argument("--model", help="model id or path for the backend")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", help="cache dense corpus embeddings here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--top-k",
        type=int,
        default=10,
        help="passages handed on per query; adds nDCG/MRR/Recall at this cut-off to the report",
    )
    parser.add_argument(
        "--selective",
        action="append",
        default=[],
        metavar="POLICY:THRESHOLD",
        help="add a selective run (repeatable), e.g. margin:0.3",
    )
    parser.add_argument(
        "--blend",
        action="append",
        default=[],
        metavar="rrf[:K[:W]]|weighted:W",
        help="add a blended run (repeatable)",
    )
    parser.add_argument("--compare", action="store_true", help="paired tests, per length segment")
    parser.add_argument(
        "--calibrate", choices=("platt", "isotonic"), help="fit on half, report on half"
    )
    parser.add_argument("--save-calibrator", help="where to save the fitted calibrator JSON")
    parser.add_argument("--json", dest="json_out", help="write the summary JSON here")
    parser.add_argument("--plot", help="write a PNG of quality vs depth and vs skip rate")


def load_first_stage(args: argparse.Namespace) -> tuple[BeirCollection, FirstStage]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.depth < 1:
        raise SystemExit(f"--depth must be >= 1, got {args.depth}")
    collection = load_beir(args.data, split=args.split)
    if not collection.judged_query_ids:
        raise SystemExit(f"{args.data}: no judged queries in qrels/{args.split}.tsv")
    return collection, FirstStage(
        collection,
        args.first_stage,
        cache_dir=args.cache_dir,
        show_progress=not args.quiet,
        bm25_preset=getattr(args, "bm25_preset", "default"),
    )


def build_backend(args: argparse.Namespace) -> Backend | None:
    if not args.backend:
        return None
    from crossrank.backends import create_backend

    options: dict[str, Any] = {"device": args.device}
    if args.model:
        options["model"] = args.model
    return create_backend(args.backend, **options)


def query_segment(query: str) -> str:
    words = len(query.split())
    if words <= 6:
        return "short (<=6 words)"
    if words <= 15:
        return "medium (7-15 words)"
    return "long (>15 words)"


def compare_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """Every run against the first stage, overall and per query-length segment."""
    from crossrank.eval.metrics import paired_tests, per_query_metrics

    qrels = evaluation.collection.qrels
    ndcg = {
        name: per_query_metrics(qrels, run.rankings, ["ndcg@10"])["ndcg@10"]
        for name, run in evaluation.runs.items()
    }
    baseline_name = next(iter(evaluation.runs))
    segments: dict[str, list[str]] = {"all": list(evaluation.query_ids)}
    for query_id in evaluation.query_ids:
        segment = query_segment(evaluation.collection.queries[query_id])
        segments.setdefault(segment, []).append(query_id)
    rows = []
    for segment, ids in segments.items():
        base = {q: ndcg[baseline_name][q] for q in ids}
        for name in list(evaluation.runs)[1:]:
            test = paired_tests(base, {q: ndcg[name][q] for q in ids})
            rows.append(
                {
                    "segment": segment,
                    "queries": len(ids),
                    "run": name,
                    "first_stage": float(np.mean(list(base.values()))),
                    "ndcg@10": float(np.mean([ndcg[name][q] for q in ids])),
                    "delta": test["mean_difference"],
                    "p_randomization": test["p_randomization"],
                    "p_ttest": test["p_ttest"],
                    "verdict": (
                        ("better" if test["mean_difference"] > 0 else "worse")
                        if test["p_randomization"] < 0.05
                        else "no significant difference"
                    ),
                }
            )
    return rows


def calibration_report(evaluation: Evaluation, kind: str, save_to: str | None) -> dict[str, Any]:
    """Fit on one half's reranked pairs; ECE/Brier of raw sigmoid vs calibrated on the rest."""
    from crossrank.calibration import (
        brier_score,
        expected_calibration_error,
        fit_calibrator,
        save_calibrator,
    )
    from crossrank.eval.runner import relevance_labels, split_queries
    from crossrank.normalize import Sigmoid

    reranked = evaluation.runs["reranked"]
    tune_ids, held_ids = split_queries(evaluation.query_ids)
    qrels = evaluation.collection.qrels
    fit_scores, fit_labels = relevance_labels(qrels, reranked.raw_scores, tune_ids)
    test_scores, test_labels = relevance_labels(qrels, reranked.raw_scores, held_ids)
    calibrator = fit_calibrator(kind, fit_scores, fit_labels)
    if save_to:
        save_calibrator(calibrator, save_to)
    raw = np.asarray(test_scores, dtype=np.float64)
    before = Sigmoid()(raw)
    after = calibrator(raw)
    return {
        "calibrator": calibrator.to_dict(),
        "held_out_pairs": len(test_labels),
        "ece_sigmoid": expected_calibration_error(before, test_labels),
        "ece_calibrated": expected_calibration_error(after, test_labels),
        "brier_sigmoid": brier_score(before, test_labels),
        "brier_calibrated": brier_score(after, test_labels),
    }


def _curves(
    evaluation: Evaluation, args: argparse.Namespace, backend: Backend, first_stage: FirstStage
) -> dict[str, Any]:
    """Depth curve (re-running at smaller depths hits the score cache) and skip curves."""
    from crossrank.eval.metrics import per_query_metrics
    from crossrank.eval.runner import evaluate_runs
    from crossrank.eval.tune import RERANKED_RUN, enumerate_options

    depths = sorted({d for d in (5, 10, 20, 30, 50, 100) if d < args.depth} | {args.depth})
    specs = [RunSpec(f"depth-{d}", depth=d) for d in depths]
    curve_eval = evaluate_runs(
        evaluation.collection,
        first_stage,
        specs,
        depth=args.depth,
        backend=backend,
        query_ids=evaluation.query_ids,
    )
    qrels = evaluation.collection.qrels
    depth_curve = []
    for depth in depths:
        rankings = curve_eval.runs[f"depth-{depth}"].rankings
        values = per_query_metrics(qrels, rankings, ["ndcg@10"])["ndcg@10"]
        depth_curve.append((depth, float(np.mean(list(values.values())))))
    if RERANKED_RUN not in evaluation.runs:
        return {"depth_curve": depth_curve, "skip_curves": {}}
    policies = ["margin", "entropy"] + (["agreement"] if evaluation.first_stage == "hybrid" else [])
    options = enumerate_options(
        evaluation, threshold_ids=evaluation.query_ids, policies=policies, with_blends=False
    )
    skip_curves: dict[str, list[tuple[float, float]]] = {}
    for option in options:
        kind = option.selective.split(":")[0]
        if kind in policies:
            skip_curves.setdefault(kind, []).append(
                (option.skip_rate(evaluation.query_ids), option.mean(evaluation.query_ids))
            )
    return {"depth_curve": depth_curve, "skip_curves": skip_curves}


COMPARE_COLUMNS = (
    "segment",
    "queries",
    "run",
    "first_stage",
    "ndcg@10",
    "delta",
    "p_randomization",
    "p_ttest",
    "verdict",
)


def run(args: argparse.Namespace) -> int:
    from crossrank.blend import parse_blend
    from crossrank.eval.report import format_table, plot, summary_document, table_columns
    from crossrank.eval.runner import evaluate_runs
    from crossrank.selective import parse_policy

    if args.top_k < 1:
        raise SystemExit(f"--top-k must be >= 1, got {args.top_k}")
    collection, first_stage = load_first_stage(args)
    from crossrank.eval.runner import caching

    built = build_backend(args)
    backend = caching(built) if built is not None else None
    specs = [RunSpec("first-stage", rerank=False)]
    if backend is None and (args.selective or args.blend or args.calibrate or args.plot):
        raise SystemExit("--selective, --blend, --calibrate and --plot need --backend")
    if backend is not None:
        specs.append(RunSpec("reranked"))
        for spec in args.selective:
            policy = parse_policy(spec)
            specs.append(RunSpec(f"selective:{getattr(policy, 'spec', spec)}", selective=policy))
        for spec in args.blend:
            blend = parse_blend(spec)
            specs.append(RunSpec(f"blend:{getattr(blend, 'spec', spec)}", blend=blend))
    evaluation = evaluate_runs(
        collection, first_stage, specs, depth=args.depth, backend=backend, progress=not args.quiet
    )
    document = summary_document(evaluation, top_k=args.top_k)
    print(
        f"{collection.name}: first stage {args.first_stage}, depth {args.depth}, "
        f"{len(evaluation.query_ids)} judged queries, backend {args.backend or '-'}"
    )
    print(format_table(document["runs"], table_columns(args.top_k)))
    if args.compare:
        rows = compare_rows(evaluation)
        document["compare"] = rows
        print()
        print(format_table(rows, COMPARE_COLUMNS))
    if args.calibrate:
        calibration = calibration_report(evaluation, args.calibrate, args.save_calibrator)
        document["calibration"] = calibration
        print(
            f"\ncalibration ({args.calibrate}, {calibration['held_out_pairs']} held-out pairs): "
            f"ECE {calibration['ece_sigmoid']:.4f} -> {calibration['ece_calibrated']:.4f}, "
            f"Brier {calibration['brier_sigmoid']:.4f} -> {calibration['brier_calibrated']:.4f}"
        )
    if args.plot and backend is not None:
        curves = _curves(evaluation, args, backend, first_stage)
        title = f"{collection.name} ({args.first_stage})"
        first = document["runs"][0]["ndcg@10"]
        plot(args.plot, title=title, first_stage_ndcg=first, **curves)
        document["curves"] = curves
        print(f"wrote {args.plot}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0
