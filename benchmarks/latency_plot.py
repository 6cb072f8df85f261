"""Latency of one rerank call against candidate depth N and against passage length, as a plot.

Left panel: N = 10, 20, 50, 100, 200, 500 passages (cycled from the 40-300-token
workload). Right panel: N = 50 passages cut to about 64, 128, 256 and 384 tokens. Each
point is the median of ``--repeats`` interleaved calls of plain ``CrossEncoder.predict``
(batch 32), crossrank's default (torch fp32) and crossrank's ``precision="auto"`` choice.
The PNG goes where ``--output`` says (matplotlib's Agg backend, no display needed); the
numbers are printed too.

Run::

    python benchmarks/latency_plot.py --output /tmp/crossrank-latency.png
    python benchmarks/latency_plot.py --output plot.png --depths 10 50 100 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload

from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.registry import ModelRegistry

DEPTHS = (10, 20, 50, 100, 200, 500)
LENGTHS = (64, 128, 256, 384)


def cut_to_tokens(tokenizer: Any, texts: list[str], tokens: int) -> list[str]:
    """Each text repeated as needed, then cut to exactly ``tokens`` word pieces (decoded)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        while len(ids) < tokens:
            ids = ids + ids
        out.append(tokenizer.decode(ids[:tokens]))
    return out


def measure(
    runners: dict[str, Any], query: str, texts: list[str], repeats: int
) -> dict[str, float]:
    calls = {name: (lambda run=run: run(query, texts)) for name, run in runners.items()}
    timings = workload.interleaved_timings(calls, repeats=repeats, warmup=0)
    return {name: 1000 * workload.median(seconds) for name, seconds in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="where to write the PNG")
    parser.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sentence_transformers import CrossEncoder

    path, description = workload.model_path()
    workload.seed_head()
    plain = CrossEncoder(path, device="cpu", local_files_only=True)
    pool, source = workload.passages(plain.tokenizer, count=100)
    query = workload.QUERY
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="crossrank-plot-onnx-")
    registry = ModelRegistry()
    workload.seed_head()
    default = CrossEncoderBackend(path, device="cpu", local_files_only=True, registry=registry)
    workload.seed_head()
    auto = CrossEncoderBackend(
        path,
        device="cpu",
        precision="auto",
        cache_dir=cache_dir,
        local_files_only=True,
        registry=registry,
    )
    auto.load()
    runners = {
        "CrossEncoder.predict (batch 32)": lambda q, texts: plain.predict(
            [(q, t) for t in texts], batch_size=32
        ),
        "crossrank default (torch-fp32)": default.score,
        f"crossrank auto ({auto.variant.label})": auto.score,
    }
    print(f"model: {description}; passages from {source}; {workload.load_line()}")

    by_depth: dict[str, list[float]] = {name: [] for name in runners}
    for depth in args.depths:
        texts = [pool[i % len(pool)] for i in range(depth)]
        result = measure(runners, query, texts, args.repeats)
        for name, ms in result.items():
            by_depth[name].append(ms)
        print(f"  N={depth:4d}  " + "  ".join(f"{n}: {v:8.0f} ms" for n, v in result.items()))
    by_length: dict[str, list[float]] = {name: [] for name in runners}
    for tokens in args.lengths:
        texts = cut_to_tokens(plain.tokenizer, pool[:50], tokens)
        result = measure(runners, query, texts, args.repeats)
        for name, ms in result.items():
            by_length[name].append(ms)
        print(
            f"  {tokens:4d} tokens x 50  "
            + "  ".join(f"{n}: {v:8.0f} ms" for n, v in result.items())
        )
    print(workload.load_line())

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in runners:
        left.plot(args.depths, by_depth[name], marker="o", label=name)
        right.plot(args.lengths, by_length[name], marker="o", label=name)
    left.set(xlabel="candidates per call (N)", ylabel="latency (ms, median)", xscale="log")
    left.set_yscale("log")
    left.set_title("latency vs depth (40-300-token passages)")
    right.set(xlabel="passage length (tokens)", ylabel="latency (ms, median)")
    right.set_title("latency vs passage length (N = 50)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{description} on CPU; {workload.load_line()}", fontsize=9)
    figure.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
