"""Measured results on every collection in ../shared/data: first stages x second stages.

For each collection, first stage (BM25, dense, hybrid RRF) and offline second stage (the
embedding rescoring backend, the scifact cross-encoder and, once
``benchmarks/reference_reranker.py`` has run, the fine-tuned reference cross-encoder) this
script reranks the top ``--depth`` candidates of every judged query and reports:

1. nDCG@10 of the first stage, reranked, and the best-on-tuning-half blend;
2. the selective trade-off: a margin/entropy/agreement threshold picked on one half of the
   queries for >= 30% skips (``mode=skip``) and for <= 0.5 nDCG points loss
   (``mode=max-loss``), reported on the other half;
3. the configuration ``crossrank tune-selective --mode best`` chooses on one half, and its
   held-out nDCG@10 against BM25 (first stage = BM25);
4. calibration on held-out queries: ECE/Brier of raw sigmoid vs Platt vs isotonic.

The fine-tuned model is only ever scored on queries it did not train on: on its training
collections that is its held-out split (recorded next to the model), elsewhere every query.

Scores are cached per (query, text) on disk (``--cache-dir``) so the script can be stopped
and resumed; reported latencies come from ``crossrank eval`` runs, not from here.

    python benchmarks/eval_collections.py --depth 30 --cache-dir .cache/eval
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_reranker import reference_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
CROSS_ENCODER = (REPO / ".." / "shared" / "models" / "minilm-ce-scifact").resolve()
COLLECTIONS = ("adi", "cacm", "cisi", "cranfield", "cystic_fibrosis", "lisa", "medline")
REFERENCE_BM25 = {
    "adi": 0.433,
    "cacm": 0.363,
    "cisi": 0.258,
    "cranfield": 0.331,
    "cystic_fibrosis": 0.396,
    "lisa": 0.338,
    "medline": 0.676,
}


BACKENDS = ("embedding", "cross-encoder", "finetuned")


def backends() -> dict[str, Any]:
    from crossrank.backends import create_backend

    found = {"embedding": create_backend("embedding", device="cpu")}
    if (CROSS_ENCODER / "config.json").is_file():
        found["cross-encoder"] = create_backend(
            "cross-encoder", model=str(CROSS_ENCODER), device="cpu"
        )
    reference = reference_model_path()
    if reference is not None:
        found["finetuned"] = create_backend("cross-encoder", model=str(reference), device="cpu")
    return found


def unseen_queries(backend_name: str, collection_name: str) -> list[str] | None:
    """Queries the backend never trained on, or None for "every judged query"."""
    if backend_name != "finetuned":
        return None
    return _heldout_queries().get(collection_name)


@functools.cache
def _heldout_queries() -> dict[str, list[str]]:
    """The reference model's held-out split, read once (the table calls this per cell)."""
    reference = reference_model_path()
    if reference is None:
        return {}
    from crossrank.finetune.pipeline import read_heldout_query_ids

    return read_heldout_query_ids(reference)


def model_digest(backend: Any) -> str:
    """Short digest of the model's identity (files and mtimes for a local path).

    Cached scores belong to one model: a retrained reference model must not reuse the
    previous one's scores just because the backend has the same name.
    """
    import hashlib

    from crossrank.backends.onnx_export import model_fingerprint

    model = backend.model_name or "unknown"
    return hashlib.sha256(model_fingerprint(str(model)).encode()).hexdigest()[:12]


def score_cache_path(
    cache_dir: Path, collection_name: str, backend_name: str, backend: Any
) -> Path:
    """Where one collection's cached scores for one backend's current model live."""
    return cache_dir / f"scores-{collection_name}-{backend_name}-{model_digest(backend)}.pkl"


def load_cache(backend: Any, path: Path) -> None:
    if path.is_file():
        with path.open("rb") as handle:
            backend._scores.update(pickle.load(handle))


def save_cache(backend: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        pickle.dump(backend._scores, handle)
    temporary.replace(path)


def calibration(evaluation: Any) -> dict[str, float]:
    from crossrank.calibration import brier_score, expected_calibration_error, fit_calibrator
    from crossrank.eval.runner import relevance_labels, split_queries
    from crossrank.normalize import Sigmoid

    run = evaluation.runs["reranked"]
    tune_ids, held_ids = split_queries(evaluation.query_ids)
    qrels = evaluation.collection.qrels
    fit_x, fit_y = relevance_labels(qrels, run.raw_scores, tune_ids)
    test_x, test_y = relevance_labels(qrels, run.raw_scores, held_ids)
    raw = np.asarray(test_x)
    out = {
        "ece_sigmoid": expected_calibration_error(Sigmoid()(raw), test_y),
        "brier_sigmoid": brier_score(Sigmoid()(raw), test_y),
    }
    for kind in ("platt", "isotonic"):
        try:
            calibrated = fit_calibrator(kind, fit_x, fit_y)(raw)
        except ValueError:
            continue
        out[f"ece_{kind}"] = expected_calibration_error(calibrated, test_y)
        out[f"brier_{kind}"] = brier_score(calibrated, test_y)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--collections", nargs="*", default=list(COLLECTIONS))
    parser.add_argument("--first-stages", nargs="*", default=["bm25", "dense", "hybrid"])
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "eval"))
    parser.add_argument("--out", default=str(REPO / ".cache" / "eval" / "results.json"))
    args = parser.parse_args()
    from crossrank.backends.local.cpu import cpu_description

    print(f"CPU: {cpu_description()}", flush=True)
    if not DATA.is_dir():
        print(f"needs the shared collections at {DATA}", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from crossrank.eval.beir import load_beir
    from crossrank.eval.first_stage import FirstStage
    from crossrank.eval.metrics import mean_metrics, per_query_metrics
    from crossrank.eval.runner import caching, evaluate_runs
    from crossrank.eval.tune import describe, tune_evaluation, tuning_specs

    cache_dir = Path(args.cache_dir)
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    available = backends()
    for name in args.collections:
        collection = load_beir(DATA / name)
        for method in args.first_stages:
            first_stage = FirstStage(collection, method, cache_dir=cache_dir)
            for backend_name in args.backends:
                key = f"{name}/{method}/{backend_name}/{args.depth}"
                if key in results or backend_name not in available:
                    continue
                backend = caching(available[backend_name])
                score_cache = score_cache_path(cache_dir, name, backend_name, backend)
                backend._scores.clear()
                load_cache(backend, score_cache)
                started = time.perf_counter()
                evaluation = evaluate_runs(
                    collection,
                    first_stage,
                    tuning_specs(),
                    depth=args.depth,
                    backend=backend,
                    query_ids=unseen_queries(backend_name, name),
                    progress=True,
                )
                save_cache(backend, score_cache)
                means = {
                    run_name: mean_metrics(per_query_metrics(collection.qrels, run.rankings))
                    for run_name, run in evaluation.runs.items()
                }
                entry: dict[str, Any] = {
                    "queries": len(evaluation.query_ids),
                    "metrics": means,
                    "pairs_computed": backend.pairs_computed,
                    "seconds": round(time.perf_counter() - started, 1),
                    "best": describe(tune_evaluation(evaluation, mode="best")),
                    "skip30": describe(tune_evaluation(evaluation, mode="skip", target_skip=0.3)),
                    "maxloss": describe(
                        tune_evaluation(evaluation, mode="max-loss", max_loss=0.005)
                    ),
                    "calibration": calibration(evaluation),
                }
                results[key] = entry
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
                first = means["first-stage"]["ndcg@10"]
                print(
                    f"{key}: first {first:.3f} reranked {means['reranked']['ndcg@10']:.3f} "
                    f"({entry['seconds']}s)",
                    flush=True,
                )
    print(markdown(results, args.depth))
    return 0


def markdown(results: dict[str, Any], depth: int) -> str:
    lines = [f"nDCG@10 (rerank depth {depth}; first stage -> reranked; * = reranking hurts)", ""]
    lines.append(
        "| collection | first stage | first stage | "
        + " | ".join(f"+ {name}" for name in BACKENDS)
        + " |"
    )
    lines.append("|---|---|---|" + "---|" * len(BACKENDS))
    for name in COLLECTIONS:
        for method in ("bm25", "dense", "hybrid"):
            cells = []
            first = None
            for backend_name in BACKENDS:
                entry = results.get(f"{name}/{method}/{backend_name}/{depth}")
                if entry is None:
                    cells.append("-")
                    continue
                own_first = entry["metrics"]["first-stage"]["ndcg@10"]
                reranked = entry["metrics"]["reranked"]["ndcg@10"]
                if unseen_queries(backend_name, name) is not None:
                    # Scored on the held-out subset: show its own first stage alongside.
                    cells.append(
                        f"{reranked:.3f}{' *' if reranked < own_first else ''} "
                        f"(held-out {entry['queries']} q, first {own_first:.3f})"
                    )
                    continue
                first = own_first
                cells.append(f"{reranked:.3f}{' *' if reranked < first else ''}")
            if first is None:
                continue
            lines.append(f"| {name} | {method} | {first:.3f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Selective (threshold picked on half A, reported on held-out half B; vs always-rerank)",
        "",
    ]
    lines.append(
        "| collection | first stage | backend | mode | policy | skip (B) | nDCG@10 vs always (B) |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        name, method, backend_name, entry_depth = key.split("/")
        if int(entry_depth) != depth:
            continue
        for mode in ("skip30", "maxloss"):
            held = entry[mode]["held_out"]
            lines.append(
                f"| {name} | {method} | {backend_name} | {mode} | {entry[mode]['selective']} | "
                f"{held['skip_rate']:.0%} | {held['delta_vs_always'] * 100:+.2f} pts |"
            )
    lines += [
        "",
        "Chosen configuration (tune-selective --mode best on half A; held-out half B)",
        "",
    ]
    lines.append("| collection | backend | chosen | B: nDCG@10 | B: BM25 | B: delta vs BM25 |")
    lines.append("|---|---|---|---|---|---|")
    for key, entry in results.items():
        name, method, backend_name, entry_depth = key.split("/")
        if method != "bm25" or int(entry_depth) != depth:
            continue
        held = entry["best"]["held_out"]
        lines.append(
            f"| {name} | {backend_name} | {entry['best']['label']} | {held['ndcg@10']:.3f} | "
            f"{held['first_stage_ndcg@10']:.3f} | {held['delta_vs_first_stage'] * 100:+.2f} pts |"
        )
    lines += ["", "Calibration on held-out queries (BM25 candidates)", ""]
    lines.append(
        "| collection | backend | ECE sigmoid | ECE Platt | ECE isotonic "
        "| Brier sigmoid | Brier Platt |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        name, method, backend_name, entry_depth = key.split("/")
        if method != "bm25" or int(entry_depth) != depth:
            continue
        cal = {key: float(value) for key, value in entry["calibration"].items()}
        nan = float("nan")
        lines.append(
            f"| {name} | {backend_name} | {cal['ece_sigmoid']:.3f} | "
            f"{cal.get('ece_platt', nan):.3f} | {cal.get('ece_isotonic', nan):.3f} | "
            f"{cal['brier_sigmoid']:.3f} | {cal.get('brier_platt', nan):.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
