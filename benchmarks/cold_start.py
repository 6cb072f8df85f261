"""Cold start of the torch-free path against sentence-transformers, in fresh processes.

A process that reranks a few results and exits (a CLI call, a serverless function, a worker
that scales from zero) pays the imports and the model load on every start. This script starts
a fresh ``python -c`` for every measurement and times, inside it, from its first statement to
the scores of 10 (query, passage) pairs: the imports, loading the model and the first
forward pass. The child reports its own peak RSS (``ru_maxrss``); the parent also times the
whole process (interpreter start to exit).

Contenders, all on the MiniLM-shaped cross-encoder of ``_local_workload.model_path()``:

- sentence-transformers ``CrossEncoder(path).predict`` (the baseline of every ratio);
- crossrank's ``cross-encoder`` backend, fp32 torch and ``runtime="onnx"`` int8 (torch and
  transformers still imported, for the tokenizer and the variant machinery);
- crossrank's ``onnx-lite`` backend on the artifacts ``crossrank optimize`` builds (fp32, int8,
  mixed int8), with ``tokenizer.json`` and settings written beside them: onnxruntime +
  tokenizers + numpy, no torch.

Each contender runs once unmeasured first (a warm disk: files in the page cache), then
``--runs`` times interleaved (A B C ... A B C ...) so load drifts hit all alike; medians are
printed. Issue 23's floors for the torch-free path: import + first score of 10 pairs under
0.5 s, peak RSS under 250 MB. The lite rows also give the largest score difference from
``CrossEncoder.predict``'s raw logits on the same 10 pairs, and the int8 rows the fidelity
gate's figures (worst query's Kendall tau and top-10 overlap against lite fp32 on the bundled
demo sample), since a fast start is worth nothing with another ranking.

Run::

    python benchmarks/cold_start.py                   # 5 runs each
    python benchmarks/cold_start.py --runs 9 --cache-dir /srv/crossrank-cache
    python benchmarks/cold_start.py --only onnx-lite-int8 sentence-transformers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload

PAIRS = 10
TIME_FLOOR_S = 0.5
RSS_FLOOR_MB = 250.0
BASELINE = "sentence-transformers"
#: workload -> passage lengths in tokens: search-result snippets, and the abstracts the other
#: local benchmarks use.
WORKLOADS = {"snippets": (15, 60), "abstracts": (40, 300)}
#: onnx-lite contender -> the quantization of the artifact it reads.
LITE_ARTIFACTS = {
    "onnx-lite-fp32": None,
    "onnx-lite-int8": "dynamic",
    "onnx-lite-int8-mixed": "dynamic-mixed",
}

def _slot(name: str) -> str:
    """The format field a child's code names a lite contender's artifact folder by."""
    return "folder_" + name.replace("-", "_")


def _lite_child(artifact: str, *, num_threads: int | None = None) -> str:
    """A lite contender's code; ``artifact`` names the folder it reads (a format field)."""
    return (
        "\nfrom crossrank.backends.onnx_lite import OnnxLiteBackend\n"
        "imported = time.perf_counter()\n"
        f"backend = OnnxLiteBackend({{{_slot(artifact)}!r}}, num_threads={num_threads!r})\n"
        "backend.load()\n"
        "loaded = time.perf_counter()\n"
        "scores = backend.score(query, texts)\n"
    )


_PRELUDE = """
import time
started = time.perf_counter()
import json, resource, sys
query, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
"""
_REPORT = """
finished = time.perf_counter()
heavy = {'torch', 'transformers', 'sentence_transformers'} & {m.split('.')[0] for m in sys.modules}
try:  # this process's own high-water mark (ru_maxrss would count the parent's at fork)
    with open('/proc/self/status') as status:
        peak = next(int(l.split()[1]) for l in status if l.startswith('VmHWM:')) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({
    'seconds': finished - started,
    'phases': [imported - started, loaded - imported, finished - loaded],
    'rss_mb': peak,
    'scores': [float(score) for score in scores],
    'heavy': sorted(heavy),
}))
"""
_CHILDREN = {
    BASELINE: """
import torch
from sentence_transformers import CrossEncoder
imported = time.perf_counter()
model = CrossEncoder({model!r}, device='cpu', local_files_only=True)
loaded = time.perf_counter()
scores = model.predict([(query, text) for text in texts], activation_fn=torch.nn.Identity())
""",
    "crossrank fp32 (torch)": """
from crossrank.backends.cross_encoder import CrossEncoderBackend
imported = time.perf_counter()
backend = CrossEncoderBackend({model!r}, device='cpu', local_files_only=True)
backend.load()
loaded = time.perf_counter()
scores = backend.score(query, texts)
""",
    "crossrank onnx int8 (torch imported)": """
from crossrank.backends.cross_encoder import CrossEncoderBackend
imported = time.perf_counter()
backend = CrossEncoderBackend(
    {model!r}, precision='int8', runtime='onnx', device='cpu', cache_dir={cache_dir!r},
    local_files_only=True,
)
backend.load()
loaded = time.perf_counter()
scores = backend.score(query, texts)
""",
    **{name: _lite_child(name) for name in LITE_ARTIFACTS},
    # ONNX Runtime's default pool (a thread per core) against one thread: on a busy shared
    # CPU the pool's threads wait for each other, and creating it costs at load.
    "onnx-lite-int8, 1 thread": _lite_child("onnx-lite-int8", num_threads=1),
}


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    phases: list[list[float]] = field(default_factory=list)
    process_seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    heavy: list[str] = field(default_factory=list)


def run_child(code: str, query: str, texts: list[str]) -> tuple[dict[str, Any], float]:
    """One fresh process: what it reports about itself, and its whole wall time here."""
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(query), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def build_artifacts(model: str, cache_dir: str) -> dict[str, str]:
    """The optimize artifacts the lite rows read, with their lite files (built once, cached)."""
    from crossrank.backends.lite_artifact import build_lite_artifact

    folders = {}
    for name, quantization in LITE_ARTIFACTS.items():
        started = time.perf_counter()
        folder = build_lite_artifact(
            model, quantization=quantization, cache_dir=cache_dir, local_files_only=True
        )
        size = (folder / "model.onnx").stat().st_size / 2**20
        ready = time.perf_counter() - started
        print(f"  {name:22s} {folder}  ({size:.0f} MB, ready in {ready:.1f} s)")
        folders[name] = str(folder)
    return folders


def gate_figures(folders: dict[str, str]) -> dict[str, str]:
    """Worst query's Kendall tau / top-10 overlap of each lite int8 row against lite fp32."""
    from crossrank.backends.local.fidelity import (
        DEFAULT_MIN_KENDALL_TAU,
        DEFAULT_MIN_TOP_K_OVERLAP,
        kendall_tau,
        top_k_overlap,
    )
    from crossrank.backends.local.options import demo_fidelity_sample
    from crossrank.backends.onnx_lite import OnnxLiteBackend

    sample = demo_fidelity_sample()
    reference = OnnxLiteBackend(folders["onnx-lite-fp32"])
    expected = [reference.score(query, list(texts)) for query, texts in sample]
    figures = {}
    for name in ("onnx-lite-int8", "onnx-lite-int8-mixed"):
        backend = OnnxLiteBackend(folders[name])
        taus, overlaps = [], []
        for (query, texts), fp32 in zip(sample, expected, strict=True):
            scores = backend.score(query, list(texts))
            taus.append(kendall_tau(fp32, scores))
            overlaps.append(top_k_overlap(fp32, scores))
        passed = min(taus) >= DEFAULT_MIN_KENDALL_TAU and min(overlaps) >= DEFAULT_MIN_TOP_K_OVERLAP
        verdict = "passes" if passed else "fails"
        figures[name] = f"tau {min(taus):.3f}, top-10 {min(overlaps):.2f} ({verdict})"
    return figures


def measure(
    codes: dict[str, str], texts: list[str], *, runs: int
) -> dict[str, Measured]:
    """One unmeasured start per contender (a warm disk), then ``runs`` interleaved rounds."""
    measured = {name: Measured() for name in codes}
    for code in codes.values():
        run_child(code, workload.QUERY, texts)
    for _ in range(runs):
        for name, code in codes.items():
            report, wall = run_child(code, workload.QUERY, texts)
            row = measured[name]
            row.seconds.append(report["seconds"])
            row.phases.append(report["phases"])
            row.process_seconds.append(wall)
            row.rss_mb.append(report["rss_mb"])
            row.scores, row.heavy = report["scores"], report["heavy"]
    return measured


def print_table(label: str, measured: dict[str, Measured]) -> list[tuple[str, float, float, bool]]:
    """The markdown table of one workload; returns (name, seconds, MB, torch-free) per row."""
    base = measured[BASELINE]
    base_s, base_rss = statistics.median(base.seconds), statistics.median(base.rss_mb)
    print(f"\n{label}\n")
    print(
        "| contender | import + 10 pairs | x s-t | import / load / score | process | "
        "peak RSS | x s-t | max abs score diff | torch-free |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for name, row in measured.items():
        seconds, rss = statistics.median(row.seconds), statistics.median(row.rss_mb)
        phases = " / ".join(f"{statistics.median(p):.2f}" for p in zip(*row.phases, strict=True))
        difference = max(abs(a - b) for a, b in zip(row.scores, base.scores, strict=True))
        free = "yes" if not row.heavy else f"no ({', '.join(row.heavy)})"
        print(
            f"| {name} | {seconds:.2f} s | {seconds / base_s:.2f} | {phases} | "
            f"{statistics.median(row.process_seconds):.2f} s | {rss:.0f} MB | "
            f"{rss / base_rss:.2f} | {difference:.1e} | {free} |"
        )
        rows.append((name, seconds, rss, not row.heavy))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured starts per contender")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the optimize artifacts live (default: crossrank's cache, as optimize)",
    )
    parser.add_argument("--only", nargs="+", choices=list(_CHILDREN), default=None)
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        help="passage lengths: short snippets, and abstracts like the other benchmarks'",
    )
    parser.add_argument("--no-gate", action="store_true", help="skip the int8 ranking figures")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")

    from transformers import AutoTokenizer

    from crossrank.backends.local.onnx_export import cache_root

    model, description = workload.model_path()
    cache_dir = str(cache_root(args.cache_dir))
    print(f"CPU: {workload.cpu_line()}")
    print(f"model: {description} ({model})")
    print(f"before: {workload.load_line()} (the CPU is shared with other jobs)")
    print("artifacts (crossrank optimize's ONNX builds + tokenizer.json and settings):")
    folders = build_artifacts(model, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)

    names = args.only or list(_CHILDREN)
    if BASELINE not in names:
        names = [BASELINE, *names]
    slots = {_slot(lite): folder for lite, folder in folders.items()}
    codes = {
        name: _PRELUDE + _CHILDREN[name].format(model=model, cache_dir=cache_dir, **slots) + _REPORT
        for name in names
    }
    print(f"each workload: one unmeasured start per contender, then {args.runs} interleaved runs")
    results = {}
    for label in args.workloads:
        low, high = WORKLOADS[label]
        texts, source = workload.passages(tokenizer, count=PAIRS, min_tokens=low, max_tokens=high)
        encoded = tokenizer([workload.QUERY] * len(texts), texts)["input_ids"]
        heading = (
            f"{label}: 1 query x {len(texts)} passages of {low}-{high} tokens "
            f"({sum(map(len, encoded))} tokens in all) from {source}"
        )
        print(heading, flush=True)
        results[heading] = measure(codes, texts, runs=args.runs)
        print(f"  done; {workload.load_line()}", flush=True)

    gates = {} if args.no_gate else gate_figures(folders)
    print(f"\nCPU: {workload.cpu_line()}; after: {workload.load_line()}")
    floors = []
    for heading, measured in results.items():
        for name, seconds, rss, free in print_table(heading, measured):
            if not name.startswith("onnx-lite"):
                continue
            ok = seconds < TIME_FLOOR_S and rss < RSS_FLOOR_MB and free
            floors.append(
                f"  {heading.split(':')[0]}, {name}: {seconds:.2f} s, {rss:.0f} MB, "
                f"{'no torch' if free else 'torch imported'} -> {'PASS' if ok else 'FAIL'}"
            )
    print(
        f"\nmedians of {args.runs} fresh processes; 'import + 10 pairs' is timed inside the child "
        "from its first statement, 'process' by the parent from exec to exit; score differences "
        f"are against {BASELINE}'s raw logits on the same pairs"
    )
    print(
        f"issue 23 floors, torch-free path: import + first score of {PAIRS} pairs < "
        f"{TIME_FLOOR_S} s, peak RSS < {RSS_FLOOR_MB:.0f} MB"
    )
    print("\n".join(floors))
    for name, figures in gates.items():
        print(f"  {name} ranking vs onnx-lite-fp32 on the bundled demo sample: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
