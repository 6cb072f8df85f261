"""MaxSim over the bundled MiniLM's token embeddings against its own pooled cosine.

The question: given only the offline model crossrank ships (all-MiniLM-L6-v2, trained for
mean-pooled cosine), does late interaction over its token vectors rerank better or worse
than the pooled vector it was trained for? Both read the same forward pass, so the only
difference is how token vectors become one score.

Per collection in ../shared/data: BM25 (bm25s, k1=0.9, b=0.4, title + text) retrieves the
top ``--depth`` (30) documents per judged query; they are reranked by

* ``pooled``: cosine of the normalized mean-pooled embeddings (the ``embedding`` backend);
* ``maxsim``: mean over query tokens of the best cosine with a document token (the
  ``late-interaction`` backend with ``encoder="token-embeddings"``);

and nDCG@10 (ranx, gain 2^rel - 1) is reported with BM25's, the difference maxsim - pooled,
its ratio, and per-query wins / losses. Each distinct candidate is encoded once per
collection (one forward pass gives both the pooled and the token vectors); before the table,
both scorings are checked against the two backends' own ``score`` on a few queries.

Run::

    python benchmarks/late_interaction.py                     # every collection, every query
    python benchmarks/late_interaction.py --queries 20        # 20 judged queries each
    python benchmarks/late_interaction.py --collections adi medline
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from crossrank.backends.embedding import EMBEDDED_MODEL, EmbeddingBackend
from crossrank.backends.late_interaction import LateInteractionBackend, maxsim
from crossrank.registry import ModelRegistry

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def cpu_line() -> str:
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")
                flags = [flag for flag in line.split(":", 1)[1].split() if flag in wanted]
                break
    except OSError:
        pass
    one, five, _ = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, flags "
        f"{' '.join(flags) or 'unknown'}; load average {one:.2f} {five:.2f}"
    )


def encode(encoder: Any, texts: list[str], batch_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalized pooled vectors and unit-length token vectors from one forward pass."""
    outputs = encoder.encode(
        texts,
        batch_size=batch_size,
        output_value=None,
        convert_to_numpy=False,
        show_progress_bar=False,
    )
    pooled = np.stack([out["sentence_embedding"].float().cpu().numpy() for out in outputs])
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    tokens = []
    for out in outputs:
        mask = out["attention_mask"].bool().cpu()
        vectors = out["token_embeddings"].float().cpu()[mask].numpy()
        tokens.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
    return pooled, tokens


def bm25_top(collection: Any, query_ids: list[str], depth: int) -> dict[str, list[str]]:
    from crossrank.eval.bm25 import BM25Index

    doc_ids = list(collection.corpus)
    index = BM25Index([collection.corpus[doc_id].full_text for doc_id in doc_ids])
    return {
        query_id: [
            doc_ids[hit.index] for hit in index.search(collection.queries[query_id], k=depth)
        ]
        for query_id in query_ids
    }


def best_first(ids: list[str], scores: list[float]) -> list[str]:
    """``ids`` by descending score; ties keep BM25's order."""
    return [ids[i] for i in np.argsort(-np.asarray(scores), kind="stable")]


def check_against_backends(
    collection: Any,
    candidates: dict[str, list[str]],
    pooled: dict[str, np.ndarray],
    tokens: dict[str, np.ndarray],
    backends: tuple[EmbeddingBackend, LateInteractionBackend],
) -> None:
    """The shortcut above must score exactly what the two backends score."""
    embedding, late = backends
    for query_id in list(candidates)[:2]:
        query = collection.queries[query_id]
        texts = [collection.corpus[doc_id].full_text for doc_id in candidates[query_id]]
        if not texts:
            continue
        expected_pooled = embedding.score(query, texts)
        expected_maxsim = late.score(query, texts)
        query_vector = pooled[f"q:{query_id}"]
        got_pooled = [float(pooled[doc_id] @ query_vector) for doc_id in candidates[query_id]]
        got_maxsim = maxsim(tokens[f"q:{query_id}"], [tokens[d] for d in candidates[query_id]])
        np.testing.assert_allclose(got_pooled, expected_pooled, atol=2e-4)
        np.testing.assert_allclose(got_maxsim, expected_maxsim, atol=2e-4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collections", nargs="*", default=None)
    parser.add_argument("--queries", type=int, default=None, help="judged queries per collection")
    parser.add_argument("--depth", type=int, default=30, help="BM25 candidates per query")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from crossrank.eval.beir import load_beir
    from crossrank.eval.metrics import per_query_metrics

    if not SHARED_DATA.is_dir():
        print(f"no shared collections at {SHARED_DATA}")
        return 1
    registry = ModelRegistry()
    embedding = EmbeddingBackend(EMBEDDED_MODEL, device="cpu", registry=registry)
    late = LateInteractionBackend(EMBEDDED_MODEL, device="cpu", registry=registry)
    encoder = embedding.load()
    print(f"model {EMBEDDED_MODEL} (max_seq_length {encoder.max_seq_length}); {cpu_line()}")
    print(f"BM25 top-{args.depth}, nDCG@10; other jobs may share this CPU (seconds are indicative)")
    header = (
        f"{'collection':16s} {'queries':>7s} {'bm25':>7s} {'pooled':>7s} {'maxsim':>7s} "
        f"{'max-pool':>8s} {'ratio':>6s} {'wins/losses':>12s} {'seconds':>8s}"
    )
    print(header)
    print("-" * len(header))
    names = args.collections or sorted(p.name for p in SHARED_DATA.iterdir() if p.is_dir())
    totals: dict[str, list[float]] = {"bm25": [], "pooled": [], "maxsim": []}
    for name in names:
        started = time.perf_counter()
        collection = load_beir(SHARED_DATA / name)
        judged = list(collection.judged_query_ids)
        if args.queries is not None:
            judged = sorted(random.Random(args.seed).sample(judged, min(args.queries, len(judged))))
        candidates = bm25_top(collection, judged, args.depth)
        doc_ids = sorted({doc_id for ids in candidates.values() for doc_id in ids})
        keys = doc_ids + [f"q:{query_id}" for query_id in judged]
        texts = [collection.corpus[doc_id].full_text for doc_id in doc_ids] + [
            collection.queries[query_id] for query_id in judged
        ]
        pooled_matrix, token_list = encode(encoder, texts, args.batch_size)
        pooled = dict(zip(keys, pooled_matrix, strict=True))
        tokens = dict(zip(keys, token_list, strict=True))
        check_against_backends(collection, candidates, pooled, tokens, (embedding, late))
        runs: dict[str, dict[str, list[str]]] = {"bm25": {}, "pooled": {}, "maxsim": {}}
        for query_id, ids in candidates.items():
            runs["bm25"][query_id] = ids
            if not ids:
                runs["pooled"][query_id] = runs["maxsim"][query_id] = []
                continue
            by_pool = [float(pooled[d] @ pooled[f"q:{query_id}"]) for d in ids]
            by_maxsim = maxsim(tokens[f"q:{query_id}"], [tokens[d] for d in ids])
            runs["pooled"][query_id] = best_first(ids, by_pool)
            runs["maxsim"][query_id] = best_first(ids, by_maxsim)
        per_query = {
            run: per_query_metrics(collection.qrels, ranked, ["ndcg@10"])["ndcg@10"]
            for run, ranked in runs.items()
        }
        means = {run: float(np.mean(list(values.values()))) for run, values in per_query.items()}
        wins = sum(per_query["maxsim"][q] > per_query["pooled"][q] for q in judged)
        losses = sum(per_query["maxsim"][q] < per_query["pooled"][q] for q in judged)
        for run in totals:
            totals[run].append(means[run])
        ratio = means["maxsim"] / means["pooled"] if means["pooled"] else float("nan")
        print(
            f"{name:16s} {len(judged):7d} {means['bm25']:7.4f} {means['pooled']:7.4f} "
            f"{means['maxsim']:7.4f} {means['maxsim'] - means['pooled']:+8.4f} {ratio:6.3f} "
            f"{f'{wins}/{losses}':>12s} {time.perf_counter() - started:8.1f}",
            flush=True,
        )
    mean = {run: float(np.mean(values)) for run, values in totals.items()}
    print("-" * len(header))
    print(
        f"{'mean':16s} {'':7s} {mean['bm25']:7.4f} {mean['pooled']:7.4f} {mean['maxsim']:7.4f} "
        f"{mean['maxsim'] - mean['pooled']:+8.4f} {mean['maxsim'] / mean['pooled']:6.3f}"
    )
    pairs = zip(names, totals["maxsim"], totals["pooled"], strict=True)
    worse = [name for name, late_mean, pooled_mean in pairs if late_mean < pooled_mean]
    verdict = "WORSE" if mean["maxsim"] < mean["pooled"] else "not worse"
    print(
        f"\nMaxSim over MiniLM token embeddings is {verdict} than its pooled cosine on average "
        f"(lower on {len(worse)} of {len(names)} collections: {', '.join(worse) or 'none'})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
