"""What blending the first-stage ranking back in costs, next to the rerank call it is part of.

One process, one local cross-encoder (the MiniLM-shaped model of the other local
benchmarks), 100 candidates with first-stage scores. Two measurements:

1. the blend step alone (``Blend.combine`` on 100 candidates, many repetitions), as a share
   of the median rerank call without a blend: the number the issue's floor (< 1%) is about;
2. full ``Reranker.rerank`` calls with no blend, RRF and a weighted blend, timed
   interleaved (A B C A B C ...) so load drifts hit all alike: the blend's cost should be
   invisible in the noise of the call.

Run::

    python benchmarks/blend_overhead.py --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload

from crossrank import Candidate, Reranker
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local.cpu import cpu_description
from crossrank.blend import parse_blend
from crossrank.registry import ModelRegistry

BLENDS = ("rrf", "weighted:0.5")
FLOOR_SHARE = 0.01


def blend_seconds(spec: str, candidates: list[Candidate], scores: list[float], reps: int) -> float:
    """Median-free mean over many repetitions: one combine is microseconds, below timer noise."""
    blend = parse_blend(spec)
    assert blend is not None
    ranks = list(range(1, len(candidates) + 1))
    first_stage = [candidate.first_stage_score for candidate in candidates]
    started = time.perf_counter()
    for _ in range(reps):
        blend.combine(ranks, first_stage, scores)
    return (time.perf_counter() - started) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of rerank calls")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--blend-reps", type=int, default=20000)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_description()}", flush=True)

    from transformers import AutoTokenizer

    path, description = workload.model_path()
    texts, source = workload.passages(AutoTokenizer.from_pretrained(path), count=args.candidates)
    candidates = [
        Candidate(text=text, id=str(index), first_stage_score=float(len(texts) - index))
        for index, text in enumerate(texts)
    ]
    print(f"model: {description}; {len(texts)} candidates from {source}")
    registry = ModelRegistry()
    workload.seed_head()
    backend = CrossEncoderBackend(path, device="cpu", local_files_only=True, registry=registry)
    backend.load()
    rerankers = {"no blend": Reranker(backend)}
    rerankers.update({spec: Reranker(backend, blend=spec) for spec in BLENDS})
    query = workload.QUERY
    runners = {
        name: (lambda r=reranker: r.rerank(query, candidates))
        for name, reranker in rerankers.items()
    }
    timings = workload.interleaved_timings(runners, repeats=args.repeats)
    call = workload.median(timings["no blend"])
    scores = backend.score(query, texts)

    print(f"\n{len(texts)} candidates per call; {workload.load_line()}")
    header = (
        f"{'configuration':16s} {'call p50 ms':>11s} {'vs no blend':>11s} "
        f"{'blend µs':>9s} {'share':>8s}"
    )
    workload.print_header(header)
    worst = 0.0
    for name, seconds in timings.items():
        median = workload.median(seconds)
        if name == "no blend":
            print(f"{name:16s} {1000 * median:11.1f} {1.0:11.3f} {'-':>9s} {'-':>8s}")
            continue
        alone = blend_seconds(name, candidates, scores, args.blend_reps)
        share = alone / call
        worst = max(worst, share)
        print(
            f"{name:16s} {1000 * median:11.1f} {median / call:11.3f} {1e6 * alone:9.1f} "
            f"{100 * share:7.4f}%"
        )
    verdict = "PASS" if worst < FLOOR_SHARE else "FAIL"
    print(
        f"\nfloor (issue 9): blend step < 1% of a rerank call: worst {100 * worst:.4f}%: {verdict}"
    )
    print("(the 'vs no blend' column is whole calls, so it carries the run-to-run noise)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
