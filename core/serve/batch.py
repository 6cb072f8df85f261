"""Offline reranking of many (query, candidates) rows, resumable by shard, locally or on Ray.

Rows are cut into shards of ``shard_size`` rows. Each finished shard is written to its own
file next to the output (``<out>.shards/``) by an atomic rename, so a run that is killed
loses at most the shards in progress and the next run with the same input and config
resumes after the last written shard. When every shard is there, they are joined into the
output file in input order.

Both engines rerank a row with the same function, :func:`rerank_row`, one ``rerank`` call per
row, so ``--engine ray`` writes exactly what ``--engine local`` writes. On Ray, rows flow
through Ray Data ``map_batches`` to a pool of actors that each build the reranker (and load
the model) once; an actor that dies is restarted and its batch retried by Ray Data, and the
writer keys every result by (shard, row), so a retried batch neither loses nor duplicates a
row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.engine import Reranker
from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.eval.beir import read_jsonl
from crossrank.types import Candidate

ENGINES = ("local", "ray")
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    shards: int
    shards_resumed: int
    output: Path
    statuses: Mapping[str, int]


# -- rows ---------------------------------------------------------------------------------------


def _candidate(value: Any, where: str) -> Candidate:
    if isinstance(value, str):
        return Candidate(text=value)
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{where} must be a string or an object with 'text', got {value!r}")
    text = value.get("text")
    if not isinstance(text, str):
        raise InvalidInputError(f"{where}.text must be a string, got {text!r}")
    doc_id = value.get("id")
    score = value.get("first_stage_score", value.get("score"))
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise InvalidInputError(f"{where}.first_stage_score must be a finite number, got {score!r}")
    return Candidate(
        text=text,
        id=None if doc_id is None else str(doc_id),
        first_stage_score=None if score is None else float(score),
    )


def check_row(row: Any, position: int) -> None:
    """Fail before any work, naming the row and field, rather than hours into a run."""
    where = f"row {position}"
    if not isinstance(row, Mapping):
        raise InvalidInputError(f"{where} must be an object, got {row!r:.80}")
    if not isinstance(row.get("query"), str) or not row["query"].strip():
        raise InvalidInputError(f"{where}: field 'query' must be a non-empty string")
    candidates = row.get("candidates", row.get("documents"))
    if not isinstance(candidates, list):
        raise InvalidInputError(f"{where}: field 'candidates' must be a list")
    for index, value in enumerate(candidates):
        _candidate(value, f"{where}: candidates[{index}]")


def rerank_row(reranker: Reranker, row: Mapping[str, Any]) -> dict[str, Any]:
    """One output row: the row's id, the engine's status and the ranked candidates."""
    raw = row.get("candidates", row.get("documents")) or []
    candidates = [_candidate(value, f"candidates[{i}]") for i, value in enumerate(raw)]
    top_n = row.get("top_n")
    result = reranker.rerank(row["query"], candidates, top_n=top_n)
    return {
        "id": row.get("id", row.get("query_id")),
        "status": result.report.status,
        "results": [
            {
                "index": item.input_index,
                "id": item.id,
                "rank": item.rank,
                "score": item.score,
                "raw_score": item.raw_score,
            }
            for item in result
        ],
    }


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    return read_jsonl(path)


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- shards ------------------------------------------------------------------------------------


class ShardStore:
    """Finished shards on disk, and the manifest that says which run they belong to."""

    def __init__(self, output: Path, fingerprint: Mapping[str, Any], *, restart: bool) -> None:
        self.output = output
        self.directory = output.with_name(output.name + ".shards")
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest_path = self.directory / _MANIFEST
        wanted = json.loads(json.dumps(fingerprint, sort_keys=True))
        if manifest_path.is_file() and not restart:
            found = json.loads(manifest_path.read_text(encoding="utf-8"))
            if found != wanted:
                raise ConfigurationError(
                    f"{self.directory} holds shards of a different input or config; "
                    "pass --restart to discard them"
                )
        else:
            for stale in self.directory.glob("shard-*.jsonl"):
                stale.unlink()
            _atomic_write(manifest_path, json.dumps(wanted, sort_keys=True, indent=2))

    def path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:06d}.jsonl"

    def done(self, shard: int) -> bool:
        return self.path(shard).is_file()

    def write(self, shard: int, results: Sequence[dict[str, Any]]) -> None:
        _atomic_write(
            self.path(shard), "".join(json.dumps(row, sort_keys=True) + "\n" for row in results)
        )

    def rows(self, shard: int) -> list[dict[str, Any]]:
        with self.path(shard).open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _shard_ranges(count: int, shard_size: int) -> list[range]:
    return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


# -- engines -----------------------------------------------------------------------------------


def _run_local(
    rows: Sequence[Mapping[str, Any]],
    shards: Mapping[int, range],
    config: Mapping[str, Any],
    store: ShardStore,
    advance: Callable[[int], None],
) -> None:
    from crossrank.serve.engine_options import build_reranker

    reranker = build_reranker(config)
    for shard, positions in shards.items():
        results = []
        for position in positions:
            results.append({"row": position, **rerank_row(reranker, rows[position])})
            advance(1)
        store.write(shard, results)


class _RayReranker:
    """A Ray Data actor: builds the reranker (loads the model) once, then reranks batches."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        from crossrank.serve.engine_options import build_reranker

        self.reranker = build_reranker(config)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = [
            json.dumps(rerank_row(self.reranker, json.loads(payload)), sort_keys=True)
            for payload in batch["payload"]
        ]
        return {
            "shard": np.asarray(batch["shard"]),
            "row": np.asarray(batch["row"]),
            "result": np.asarray(results, dtype=object),
        }


def _run_ray(
    rows: Sequence[Mapping[str, Any]],
    shards: Mapping[int, range],
    config: Mapping[str, Any],
    store: ShardStore,
    advance: Callable[[int], None],
    *,
    workers: int,
    rows_per_batch: int,
) -> None:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        from crossrank.errors import missing_dependency

        raise missing_dependency("ray[data]", "ray") from exc
    if not ray.is_initialized():
        ray.init()
    items = [
        {"shard": shard, "row": position, "payload": json.dumps(rows[position])}
        for shard, positions in shards.items()
        for position in positions
    ]
    dataset = ray.data.from_items(items).map_batches(
        _RayReranker,
        fn_constructor_kwargs={"config": dict(config)},
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=rows_per_batch,
        batch_format="numpy",
        num_cpus=1,
        # A dead actor is restarted and its batch retried (Ray Data's default, made explicit).
        max_restarts=-1,
        max_task_retries=-1,
    )
    pending: dict[int, dict[int, dict[str, Any]]] = {shard: {} for shard in shards}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, position, result in zip(
            batch["shard"], batch["row"], batch["result"], strict=True
        ):
            shard, position = int(shard), int(position)
            if shard not in pending:
                continue  # a late duplicate of a shard already written
            fresh = position not in pending[shard]
            pending[shard][position] = {"row": position, **json.loads(result)}
            if fresh:
                advance(1)
            if len(pending[shard]) == len(shards[shard]):
                store.write(shard, [pending[shard][p] for p in shards[shard]])
                del pending[shard]
    missing = {shard: len(shards[shard]) - len(done) for shard, done in pending.items()}
    if missing:
        raise RuntimeError(f"Ray returned incomplete shards (shard: rows missing): {missing}")


# -- the job -----------------------------------------------------------------------------------


def run_batch(
    rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    output: str | Path,
    *,
    engine: str = "local",
    shard_size: int = 256,
    workers: int = 2,
    rows_per_batch: int = 16,
    fingerprint: Mapping[str, Any] | None = None,
    restart: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Rerank every row into ``output`` (JSONL, or Parquet by extension), resuming by shard."""
    if engine not in ENGINES:
        raise ConfigurationError(f"engine must be one of {ENGINES}, got {engine!r}")
    for name, value in (("shard_size", shard_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    for position, row in enumerate(rows):
        check_row(row, position)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    store = ShardStore(
        output,
        {
            "input": dict(fingerprint or {}),
            "rows": len(rows),
            "shard_size": shard_size,
            "config": dict(config),
        },
        restart=restart,
    )
    ranges = _shard_ranges(len(rows), shard_size)
    todo = {shard: positions for shard, positions in enumerate(ranges) if not store.done(shard)}
    resumed = len(ranges) - len(todo)
    bar = _progress(
        len(rows),
        sum(len(ranges[s]) for s in range(len(ranges)) if s not in todo),
        enabled=progress,
    )
    try:
        if todo and engine == "local":
            _run_local(rows, todo, config, store, bar.update)
        elif todo:
            _run_ray(
                rows,
                todo,
                config,
                store,
                bar.update,
                workers=workers,
                rows_per_batch=rows_per_batch,
            )
    finally:
        bar.close()
    statuses = _join(store, len(ranges), output)
    return BatchSummary(
        rows=len(rows),
        shards=len(ranges),
        shards_resumed=resumed,
        output=output,
        statuses=statuses,
    )


def _join(store: ShardStore, shard_count: int, output: Path) -> dict[str, int]:
    statuses: dict[str, int] = {}
    joined: list[dict[str, Any]] = []
    for shard in range(shard_count):
        for row in store.rows(shard):
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            joined.append(row)
    if output.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        pq.write_table(pa.Table.from_pylist(joined), temporary)
        os.replace(temporary, output)
    else:
        _atomic_write(output, "".join(json.dumps(row, sort_keys=True) + "\n" for row in joined))
    return statuses


class _NoBar:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="row", desc="rerank", dynamic_ncols=True)


def beir_rows(
    directory: str | Path, *, split: str = "test", depth: int = 100, judged_only: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every query of a BEIR folder, BM25's top ``depth`` as candidates.

    Returns the rows and a fingerprint of what they came from (for resuming).
    """
    from crossrank.eval.beir import load_beir
    from crossrank.eval.first_stage import FirstStage

    collection = load_beir(directory, split=split)
    first_stage = FirstStage(collection, "bm25")
    query_ids: Iterable[str] = (
        collection.judged_query_ids if judged_only else list(collection.queries)
    )
    rows = []
    for query_id in query_ids:
        query = collection.queries[query_id]
        candidates = first_stage.retrieve(query, k=depth)
        rows.append(
            {
                "id": query_id,
                "query": query,
                "candidates": [
                    {"id": c.id, "text": c.text, "first_stage_score": c.first_stage_score}
                    for c in candidates
                ],
            }
        )
    root = Path(directory)
    fingerprint = {
        "beir": str(root.resolve()),
        "split": split,
        "depth": depth,
        "judged_only": judged_only,
        "corpus": file_digest(root / "corpus.jsonl"),
        "queries": file_digest(root / "queries.jsonl"),
    }
    return rows, fingerprint
