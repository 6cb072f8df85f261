"""``crossrank batch``: rerank a JSONL / Parquet file, or every query of a BEIR folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossrank.errors import CrossrankError
from crossrank.serve.batch import ENGINES, beir_rows, file_digest, read_rows, run_batch
from crossrank.serve.engine_options import add_engine_arguments, engine_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="JSONL or Parquet rows of {query, candidates[, id, top_n]}, or a BEIR folder",
    )
    parser.add_argument("--out", required=True, help="output file (.jsonl or .parquet)")
    add_engine_arguments(parser)
    parser.add_argument("--engine", choices=ENGINES, default="local")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (one model each)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per resumable shard")
    parser.add_argument("--rows-per-batch", type=int, default=16, help="rows per Ray Data batch")
    parser.add_argument("--restart", action="store_true", help="discard shards of an earlier run")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: start one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    beir = parser.add_argument_group("BEIR folder input")
    beir.add_argument("--split", default="test")
    beir.add_argument("--depth", type=int, default=100, help="BM25 candidates per query")
    beir.add_argument("--all-queries", action="store_true", help="not only judged queries")


def run(args: argparse.Namespace) -> int:
    try:
        config = engine_config(args)
        source = Path(args.input)
        if source.is_dir():
            rows, fingerprint = beir_rows(
                source, split=args.split, depth=args.depth, judged_only=not args.all_queries
            )
        else:
            rows = read_rows(source)
            fingerprint = {"file": str(source.resolve()), "sha256": file_digest(source)}
        if args.engine == "ray" and args.ray_address is not None:
            import ray

            ray.init(address=args.ray_address)
        summary = run_batch(
            rows,
            config,
            args.out,
            engine=args.engine,
            shard_size=args.shard_size,
            workers=args.workers,
            rows_per_batch=args.rows_per_batch,
            fingerprint=fingerprint,
            restart=args.restart,
            progress=not args.no_progress,
        )
    except CrossrankError as exc:
        print(f"crossrank batch: {exc}")
        return 2
    statuses = ", ".join(f"{name} {count}" for name, count in sorted(summary.statuses.items()))
    print(
        f"wrote {summary.rows} rows to {summary.output} ({summary.shards} shards, "
        f"{summary.shards_resumed} resumed; {statuses or 'no rows'})"
    )
    return 0
