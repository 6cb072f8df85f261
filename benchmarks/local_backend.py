"""crossrank's local cross-encoder in every variant against plain ``CrossEncoder.predict``.

One process, one model, 100 English passages of 40-300 tokens against one query. Every
variant and the baseline (``CrossEncoder.predict`` at its defaults, batch 32) are timed
interleaved (A B C ... A B C ...) so machine load drifts hit them alike; medians decide.
Printed per variant: pairs/s, p50/p95 latency of the 100-pair call, speed-up over predict,
achieved GFLOP/s (unpadded matmul FLOPs) against a measured fp32 matmul peak, RSS after
loading, and ranking agreement with fp32 (Kendall tau, top-10 overlap). Then nDCG@10 of
each variant on the shared collections (BM25 top-30 reranked, subsampled queries), with
its difference from fp32, scored with the reference cross-encoder that
``benchmarks/reference_reranker.py`` trains (``--ndcg-model`` to pick another).

Then the first start of ``precision="auto"`` in a fresh process (import, load, 8 pairs):
cold (an empty cache: auto exports, quantizes and times every candidate on this CPU) and
after ``crossrank optimize`` (it only loads files). The CPU's flags head the output, since
they decide which variant is fastest.

Floors checked at the end (issue 23), for the class of CPU it ran on:
- ``precision="auto"`` is not slower than crossrank fp32 here; its first start after
  ``crossrank optimize`` is under 5 s;
- the fastest variant that meets the fidelity rule (``crossrank.eval.fidelity_rule``: mean
  |delta nDCG@10| against fp32 over the shared collections <= 0.005, no collection's change
  significant under a paired randomization test) is >= 4x predict on a CPU with AVX-512
  VNNI (or AMX), >= 2.5x on AVX2 without it. The rule is judged on the trained reference
  model; with sampled queries (the default) the verdict is indicative, with
  ``--ndcg-queries all`` it is the rule as stated.

Run::

    python benchmarks/local_backend.py                        # full run (minutes)
    python benchmarks/local_backend.py --repeats 5 --ndcg-queries 0   # speed only
    python benchmarks/local_backend.py --variants torch-fp32 onnx-int8
    python benchmarks/local_backend.py --variants torch-fp32 onnx-fp32 openvino-fp32 \
        openvino-bf16 openvino-int8 --repeats 5 --ndcg-queries 0 --no-first-start  # OpenVINO
    python benchmarks/local_backend.py --ndcg-queries all     # nDCG over every judged query
    python benchmarks/local_backend.py --no-first-start       # skip the fresh-process starts
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload

from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local.fidelity import FidelityGate, kendall_tau, top_k_overlap
from crossrank.eval.fidelity_check import FIRST_STAGE_DEPTH
from crossrank.eval.fidelity_rule import FidelityVerdict
from crossrank.registry import ModelRegistry

VARIANTS = {
    "torch-fp32": {"precision": "fp32", "runtime": "torch"},
    "torch-bf16": {"precision": "bf16", "runtime": "torch"},
    "onnx-fp32": {"precision": "fp32", "runtime": "onnx"},
    "torch-int8": {"precision": "int8", "runtime": "torch"},
    "onnx-int8": {"precision": "int8", "runtime": "onnx"},
    "onnx-int8-mixed": {"precision": "int8-mixed", "runtime": "onnx"},
    # crossrank[openvino]; skipped (with the reason) where it is not installed
    "openvino-fp32": {"precision": "fp32", "runtime": "openvino"},
    "openvino-bf16": {"precision": "bf16", "runtime": "openvino"},
    "openvino-int8": {"precision": "int8", "runtime": "openvino"},
    "auto": {"precision": "auto"},
}


@dataclass
class Row:
    name: str
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    ratio: float
    gflops: float
    rss_mb: float
    tau: float
    overlap: float
    note: str = ""


def build_backends(
    path: str,
    names: list[str],
    *,
    cache_dir: str,
    token_budget: int | None,
    threads: int | None,
    registry: ModelRegistry | None = None,
) -> tuple[dict[str, CrossEncoderBackend], dict[str, float]]:
    registry = registry if registry is not None else ModelRegistry()
    backends: dict[str, CrossEncoderBackend] = {}
    rss: dict[str, float] = {}
    for name in names:
        workload.seed_head()
        backend = CrossEncoderBackend(
            path,
            device="cpu",
            cache_dir=cache_dir,
            token_budget=token_budget,
            num_threads=threads,
            local_files_only=True,
            registry=registry,
            **VARIANTS[name],
        )
        try:
            backend.load()
        except Exception as exc:
            print(f"  skip {name}: {type(exc).__name__}: {exc}")
            continue
        backends[name] = backend
        rss[name] = workload.current_rss_mb()
    return backends, rss


def reference_model() -> str | None:
    """The model the fidelity rule scores with: the one ``benchmarks/reference_reranker.py``
    trains when it has run here, else the shared trained cross-encoder (issue 23's
    reference, ``../shared/models/minilm-ce-scifact``), else ``None``."""
    from reference_reranker import reference_model_path

    found = reference_model_path()
    if found is None and (workload.SCIFACT_MODEL / "config.json").is_file():
        found = workload.SCIFACT_MODEL
    return str(found) if found is not None else None


def ndcg_table(
    backends: dict[str, CrossEncoderBackend], *, queries_per_collection: int | None, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """collection -> variant -> query id -> nDCG@10 (BM25 top-30 reranked; ``None``: every
    judged query). Per query, so the fidelity rule can test each collection's change."""
    from crossrank.eval.fidelity_check import rerank_ndcg

    if not workload.SHARED_DATA.is_dir():
        print(f"  no shared collections at {workload.SHARED_DATA}; nDCG skipped")
        return {}
    table = rerank_ndcg(
        sorted(p for p in workload.SHARED_DATA.iterdir() if p.is_dir()),
        {name: backend.score for name, backend in backends.items()},
        depth=FIRST_STAGE_DEPTH,
        queries_per_collection=queries_per_collection,
        seed=seed,
    )
    for collection, rows in table.items():
        means = "  ".join(f"{n}={_mean(v):.4f}" for n, v in rows.items())
        print(f"  {collection:16s} ({len(rows['bm25'])} queries)  {means}", flush=True)
    return table


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def fidelity_verdicts(
    table: dict[str, dict[str, dict[str, float]]], names: list[str]
) -> dict[str, FidelityVerdict]:
    """The fidelity rule (``crossrank.eval.fidelity_rule``) for each variant against fp32."""
    from crossrank.eval.fidelity_check import judge_table

    verdicts = {}
    for name in names:
        if name == "torch-fp32":
            continue
        verdicts[name] = judge_table(table, reference="torch-fp32", variant=name)
        print(f"\n{name} against torch-fp32:\n{verdicts[name].table()}")
    return verdicts


def speed_floor() -> tuple[float, str]:
    """Issue 23's floor for this CPU class: 4x predict with VNNI (or AMX), 2.5x on AVX2."""
    from crossrank.backends.local.cpu import cpu_flags, has_fast_int8

    if has_fast_int8():
        return 4.0, "AVX-512 VNNI / AMX"
    if "avx2" in cpu_flags():
        return 2.5, "AVX2 without VNNI"
    return 1.0, "neither AVX2 nor VNNI (no floor set; fp32 parity)"


def print_auto_choice(model: str, *, cache_dir: str, registry: ModelRegistry) -> None:
    """What ``precision="auto"`` decides for ``model`` (gate and speed, every candidate).

    The timing model has an untrained head, so its scores are nearly ties and any rounding
    reorders them; a user's trained model is what the gate really runs on. ``registry`` is
    the one the nDCG variants were built on, so auto reuses their loaded variants.
    """
    auto = CrossEncoderBackend(
        model,
        precision="auto",
        device="cpu",
        cache_dir=cache_dir,
        local_files_only=True,
        registry=registry,
    )
    auto.load()
    selection = auto.selection
    assert selection is not None
    print("  precision='auto' on this model " + selection.describe().replace("\n", "\n    "))


def first_start_section(path: str) -> float:
    """precision='auto' in fresh processes: cold, then after ``crossrank optimize``."""
    import subprocess

    print("\nfirst start of precision='auto' (fresh process: import + load + 8 pairs):", flush=True)
    cold, cold_label = workload.first_start(path, tempfile.mkdtemp(prefix="crossrank-cold-"))
    print(f"  cold (empty cache)          {cold:7.1f} s  -> {cold_label}", flush=True)
    optimized = tempfile.mkdtemp(prefix="crossrank-optimized-")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "crossrank.cli", "optimize", path, "--output", optimized,
         "--local-files-only"],
        check=True, capture_output=True, timeout=1800,
    )  # fmt: skip
    built = time.perf_counter() - started
    warm, warm_label = workload.first_start(path, optimized)
    print(f"  crossrank optimize          {built:7.1f} s  (once per machine class)")
    print(f"  after optimize              {warm:7.1f} s  -> {warm_label}")
    return warm


def _query_count(value: str) -> int | None:
    if value == "all":
        return None
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"--ndcg-queries must be >= 0 or 'all', got {value!r}")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per variant")
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--ndcg-queries",
        type=_query_count,
        default=20,
        help="sampled queries per collection, or 'all'; 0 skips",
    )
    parser.add_argument(
        "--ndcg-model",
        default=None,
        help="model for the nDCG table (default: the reference reranker from "
        "benchmarks/reference_reranker.py when trained here, else the timing model)",
    )
    parser.add_argument("--cache-dir", default=None, help="ONNX cache (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--no-first-start", action="store_true", help="skip the fresh-process first starts"
    )
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import CrossEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    path, description = workload.model_path()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="crossrank-bench-onnx-")
    print(f"CPU: {workload.cpu_line()}")
    print(f"model: {description} at {path}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {workload.load_line()}")

    workload.seed_head()
    plain = CrossEncoder(path, device="cpu", local_files_only=True)
    rss_plain = workload.current_rss_mb()
    texts, source = workload.passages(plain.tokenizer, count=args.passages)
    query = workload.QUERY
    lengths = workload.token_lengths(plain.tokenizer, query, texts)
    print(
        f"workload: {len(texts)} passages from {source}; pair tokens min {min(lengths)} "
        f"mean {sum(lengths) / len(lengths):.0f} max {max(lengths)}"
    )
    pairs = [(query, text) for text in texts]
    flops = workload.bert_flops(lengths, plain.model.config)

    print("building variants (ONNX export/quantization on first use) ...", flush=True)
    backends, rss = build_backends(
        path,
        args.variants,
        cache_dir=cache_dir,
        token_budget=args.token_budget,
        threads=args.threads,
    )
    auto = backends.get("auto")
    if auto is not None and auto.selection is not None:
        print("precision='auto' " + auto.selection.describe().replace("\n", "\n    "))
    peak_fp32 = workload.matmul_peak_gflops("float32")
    peak_bf16 = workload.matmul_peak_gflops("bfloat16")
    print(f"measured matmul peak: fp32 {peak_fp32:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s")

    reference = backends["torch-fp32"].score(query, texts) if "torch-fp32" in backends else None
    if reference is None:
        reference = plain.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
    runners: dict[str, Any] = {"predict": lambda: plain.predict(pairs, batch_size=32)}
    for name, backend in backends.items():
        runners[name] = lambda backend=backend: backend.score(query, texts)
    print(f"timing {len(runners)} runners x {args.repeats} interleaved rounds ...", flush=True)
    load_before = workload.load_line()
    timings = workload.interleaved_timings(runners, repeats=args.repeats)
    load_after = workload.load_line()

    base = workload.median(timings["predict"])
    gate = FidelityGate()
    rows = []
    for name, seconds in timings.items():
        med = workload.median(seconds)
        if name == "predict":
            scores = plain.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
            memory, note = rss_plain, ""
        else:
            scores = backends[name].score(query, texts)
            memory = rss[name]
            note = f"= {backends[name].variant.label}" if name == "auto" else ""
        agreement = gate.measure(name, [reference], [scores])
        rows.append(
            Row(
                name=name,
                pairs_per_s=len(texts) / med,
                p50_ms=1000 * med,
                p95_ms=1000 * workload.percentile(seconds, 0.95),
                ratio=base / med,
                gflops=flops / med / 1e9,
                rss_mb=memory,
                tau=kendall_tau(reference, scores),
                overlap=top_k_overlap(reference, scores),
                note=note + (" (gate: pass)" if agreement.passed else " (gate: FAIL)"),
            )
        )

    print(f"\n{len(texts)} pairs per call; load before {load_before}; after {load_after}")
    header = (
        f"{'variant':16s} {'pairs/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'x predict':>9s} "
        f"{'GFLOP/s':>8s} {'%fp32pk':>7s} {'RSS MB':>7s} {'tau':>6s} {'top10':>5s}  note"
    )
    workload.print_header(header)
    for row in rows:
        print(
            f"{row.name:16s} {row.pairs_per_s:8.1f} {row.p50_ms:8.0f} {row.p95_ms:8.0f} "
            f"{row.ratio:9.2f} {row.gflops:8.1f} {100 * row.gflops / peak_fp32:6.0f}% "
            f"{row.rss_mb:7.0f} {row.tau:6.3f} {row.overlap:5.2f}  {row.note}"
        )
    print(f"peak RSS of the process: {workload.peak_rss_mb():.0f} MB")

    table: dict[str, dict[str, dict[str, float]]] = {}
    verdicts: dict[str, FidelityVerdict] = {}
    if args.ndcg_queries != 0:
        sampled = (
            "every judged query"
            if args.ndcg_queries is None
            else (f"{args.ndcg_queries} sampled queries")
        )
        print(
            f"\nnDCG@10, BM25 top-{FIRST_STAGE_DEPTH} reranked, {sampled} per collection:",
            flush=True,
        )
        ndcg_backends = backends
        ndcg_model = args.ndcg_model or reference_model()
        if ndcg_model is not None and ndcg_model != path:
            print(f"  model: {ndcg_model}")
            ndcg_registry = ModelRegistry()
            ndcg_backends, _ = build_backends(
                ndcg_model,
                [name for name in args.variants if name != "auto"],
                cache_dir=cache_dir,
                token_budget=args.token_budget,
                threads=args.threads,
                registry=ndcg_registry,
            )
            print_auto_choice(ndcg_model, cache_dir=cache_dir, registry=ndcg_registry)
        table = ndcg_table(ndcg_backends, queries_per_collection=args.ndcg_queries, seed=args.seed)
        if table and "torch-fp32" in ndcg_backends:
            verdicts = fidelity_verdicts(table, list(ndcg_backends))

    warm_start = None if args.no_first_start else first_start_section(path)

    floor, cpu_class = speed_floor()
    print(f"\nfloors (issue 23; this CPU's class: {cpu_class}):")
    by_name = {row.name: row for row in rows}
    if "torch-fp32" in by_name and "auto" in by_name:
        ratio = by_name["auto"].ratio / by_name["torch-fp32"].ratio
        verdict = "PASS" if ratio >= 1.0 else "FAIL"
        print(f"  auto / crossrank fp32 here = {ratio:.2f} (>= 1.0): {verdict}")
    if warm_start is not None:
        verdict = "PASS" if warm_start < 5.0 else "FAIL"
        print(f"  first start after optimize = {warm_start:.1f} s (< 5 s): {verdict}")
    if not verdicts:
        print(
            "  speed within the fidelity rule: not judged (needs the nDCG table with the "
            "reference model: --ndcg-queries all)"
        )
        return 0
    faithful = [row for row in rows if row.name in verdicts and verdicts[row.name].passed]
    if "torch-fp32" in by_name:
        faithful.append(by_name["torch-fp32"])  # the reference meets the rule by definition
    scope = "" if args.ndcg_queries is None else " (on sampled queries: indicative only)"
    if not faithful:
        print(f"  no variant meets the fidelity rule{scope}: FAIL")
        return 0
    best = max(faithful, key=lambda row: row.ratio)
    verdict = "PASS" if best.ratio >= floor else "FAIL"
    print(
        f"  fastest variant within the fidelity rule{scope}: {best.name} = "
        f"{best.ratio:.2f}x predict (>= {floor}): {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
