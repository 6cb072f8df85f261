"""One fine-tuning run end to end: split, mine, build, measure before, train, save, measure after.

The CLI and the reference-reranker benchmark both call :func:`finetune`; it returns a
report instead of printing one, so callers choose how to show it. Next to the model it
writes ``crossrank_finetune.json`` (arguments, held-out query ids, pair counts, scores), so
a saved model always says what it was trained on and which queries it never saw.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossrank.blend import Blend, parse_blend
from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.eval.beir import BeirCollection, load_beir
from crossrank.finetune.evaluate import (
    FirstStageRun,
    blended_run,
    bm25_run,
    first_stage_run,
    model_scorer,
    ndcg_at_10,
    reranked_run,
)
from crossrank.finetune.miners import BM25Miner, DenseMiner
from crossrank.finetune.pairs import (
    CandidateMiner,
    PairStats,
    QuerySplit,
    TrainingList,
    TrainingPair,
    build_lists,
    build_pairs,
    mine_negatives,
    split_queries,
)
from crossrank.finetune.train import (
    EMBEDDED_BASE,
    TrainingConfig,
    TrainingOutcome,
    is_listwise,
    load_base_model,
    save_model,
    train_cross_encoder,
)

METADATA_FILE = "crossrank_finetune.json"


@dataclass(frozen=True)
class DataConfig:
    """How judgments become training examples and how the held-out evaluation is run."""

    heldout_fraction: float = 0.2
    negative_depth: int = 50
    negatives_per_positive: int = 3
    max_positives_per_query: int = 16
    dense_negatives: bool = False
    rerank_depth: int = 100
    #: score long documents in token windows (the ``Reranker`` default) when evaluating
    windowing: bool = True
    qrels_split: str = "test"
    #: also evaluate the model blended with BM25 (a ``Reranker(blend=...)`` spec; None: skip)
    eval_blend: str | None = "weighted:0.5"

    def __post_init__(self) -> None:
        if self.rerank_depth < 10:
            raise ConfigurationError(f"rerank_depth must be >= 10, got {self.rerank_depth!r}")
        try:
            parse_blend(self.eval_blend)
        except InvalidInputError as exc:
            raise ConfigurationError(f"eval_blend: {exc}") from exc


@dataclass(frozen=True)
class HeldoutScores:
    """nDCG@10 on one collection's held-out queries: BM25, base model, fine-tuned model."""

    collection: str
    queries: int
    bm25: float
    base: float | None
    finetuned: float
    #: the fine-tuned model blended with BM25 (``blend``), when that was evaluated
    blended: float | None = None
    blend: str | None = None


@dataclass
class FinetuneReport:
    model_path: Path
    splits: list[QuerySplit]
    stats: PairStats
    outcome: TrainingOutcome
    heldout: list[HeldoutScores]
    seconds: dict[str, float] = field(default_factory=dict)

    def mean(self, attribute: str) -> float | None:
        """Macro average over collections with held-out queries (None if any is missing)."""
        values = [getattr(scores, attribute) for scores in self.heldout]
        if not values or any(value is None for value in values):
            return None
        return sum(values) / len(values)


Log = Callable[[str], None]


def load_collections(
    directories: Sequence[str | Path], *, qrels_split: str
) -> list[BeirCollection]:
    collections = [load_beir(directory, split=qrels_split) for directory in directories]
    names = [collection.name for collection in collections]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"collection given more than once: {', '.join(duplicates)}")
    return collections


def _examples(
    collection: BeirCollection,
    split: QuerySplit,
    miners: Sequence[CandidateMiner],
    data: DataConfig,
    training: TrainingConfig,
    stats: PairStats,
) -> list[TrainingPair] | list[TrainingList]:
    negatives = mine_negatives(collection, split.train_query_ids, miners, depth=data.negative_depth)
    build = build_lists if is_listwise(training.loss) else build_pairs
    return build(  # type: ignore[return-value]
        collection,
        split.train_query_ids,
        negatives,
        max_positives_per_query=data.max_positives_per_query,
        negatives_per_positive=data.negatives_per_positive,
        seed=training.seed,
        stats=stats,
    )


def _evaluate(
    runs: Sequence[FirstStageRun],
    model_path: str,
    training: TrainingConfig,
    label: str,
    *,
    windowing: bool,
    blend: Blend | None = None,
) -> list[tuple[float, float | None]]:
    """nDCG@10 per run of the model alone and, with ``blend``, of the model blended."""
    scorer = model_scorer(model_path, device=training.device, windowing=windowing)
    scores: list[tuple[float, float | None]] = []
    for run in runs:
        reranked = reranked_run(
            run, scorer, progress=training.progress, description=f"{label} {run.collection.name}"
        )
        blended = (
            ndcg_at_10(run.collection, blended_run(run, reranked, blend))
            if blend is not None
            else None
        )
        scores.append((ndcg_at_10(run.collection, reranked), blended))
    return scores


def finetune(
    data_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    training: TrainingConfig,
    data: DataConfig,
    evaluate_base: bool = True,
    log: Log = print,
) -> FinetuneReport:
    """Fine-tune ``training.base_model`` on the judged queries of ``data_dirs``, save it."""
    if not data_dirs:
        raise ConfigurationError("at least one --data folder is needed")
    out_path = Path(out_dir)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    collections = load_collections(data_dirs, qrels_split=data.qrels_split)
    stats = PairStats()
    splits: list[QuerySplit] = []
    examples: list[Any] = []
    heldout_runs: list[FirstStageRun] = []
    for collection in collections:
        split = split_queries(
            collection, heldout_fraction=data.heldout_fraction, seed=training.seed
        )
        splits.append(split)
        bm25 = BM25Miner(collection)
        miners: list[CandidateMiner] = [bm25]
        if data.dense_negatives:
            miners.append(DenseMiner(collection, device=training.device))
        found = _examples(collection, split, miners, data, training, stats)
        examples.extend(found)
        log(
            f"{collection.name}: {len(split.train_query_ids)} training queries "
            f"({len(found)} examples), {len(split.heldout_query_ids)} held out"
        )
        if split.heldout_query_ids:
            heldout_runs.append(
                first_stage_run(collection, bm25, split.heldout_query_ids, depth=data.rerank_depth)
            )
    seconds["prepare"] = time.perf_counter() - started

    if training.base_model == EMBEDDED_BASE:
        log(
            "note: the embedded base is a bi-encoder; its new classification head needs on the "
            "order of a thousand steps to learn to rank. With fewer, start from a trained "
            "cross-encoder (--base PATH_OR_ID)."
        )
    model = load_base_model(training)
    base_scores: list[float] | None = None
    if evaluate_base and heldout_runs:
        phase = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="crossrank-base-") as scratch:
            save_model(model, Path(scratch))
            base_scores = [
                alone
                for alone, _blended in _evaluate(
                    heldout_runs, scratch, training, "base", windowing=data.windowing
                )
            ]
        seconds["evaluate_base"] = time.perf_counter() - phase

    log(
        f"training on {len(examples)} examples ({stats.positives} positives, "
        f"{stats.negatives} negatives) with loss={training.loss}"
    )
    outcome = train_cross_encoder(model, examples, training)
    seconds["train"] = outcome.seconds
    save_model(model, out_path)
    del model

    heldout: list[HeldoutScores] = []
    if heldout_runs:
        phase = time.perf_counter()
        blend = parse_blend(data.eval_blend)
        tuned_scores = _evaluate(
            heldout_runs,
            str(out_path),
            training,
            "fine-tuned",
            windowing=data.windowing,
            blend=blend,
        )
        seconds["evaluate_finetuned"] = time.perf_counter() - phase
        for position, run in enumerate(heldout_runs):
            alone, blended = tuned_scores[position]
            heldout.append(
                HeldoutScores(
                    collection=run.collection.name,
                    queries=len(run.hits),
                    bm25=ndcg_at_10(run.collection, bm25_run(run)),
                    base=base_scores[position] if base_scores is not None else None,
                    finetuned=alone,
                    blended=blended,
                    blend=getattr(blend, "spec", None),
                )
            )
    seconds["total"] = time.perf_counter() - started
    report = FinetuneReport(
        model_path=out_path,
        splits=splits,
        stats=stats,
        outcome=outcome,
        heldout=heldout,
        seconds=seconds,
    )
    write_metadata(report, training=training, data=data, data_dirs=data_dirs)
    return report


def write_metadata(
    report: FinetuneReport,
    *,
    training: TrainingConfig,
    data: DataConfig,
    data_dirs: Sequence[str | Path],
) -> Path:
    payload = {
        "base_model": training.base_model,
        "training": asdict(training),
        "data": asdict(data),
        "collections": [str(Path(directory).resolve()) for directory in data_dirs],
        "splits": [asdict(split) for split in report.splits],
        "pairs": asdict(report.stats),
        "outcome": asdict(report.outcome),
        "heldout_ndcg@10": [asdict(scores) for scores in report.heldout],
        "seconds": report.seconds,
    }
    path = report.model_path / METADATA_FILE
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def read_heldout_query_ids(model_dir: str | Path) -> dict[str, list[str]]:
    """The held-out query ids a saved model never trained on, by collection name."""
    payload = json.loads((Path(model_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    return {split["collection"]: list(split["heldout_query_ids"]) for split in payload["splits"]}
