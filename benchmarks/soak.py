"""Soak: 20,000 rerank calls of mixed sizes; memory must stay flat and latency must not drift.

Calls alternate between the engine (``Reranker.rerank``) and one adapter (LangChain's
``CrossrankCompressor.compress_documents`` when langchain-core is installed, else a second
engine over another backend), both over a fast deterministic keyword backend, so what is
measured is crossrank's own overhead: validation, deduplication, normalization, result and
document building. Every call builds fresh inputs, as a server does per request.

The schedule of sizes (1 to 200 candidates, some with duplicates and long texts) is drawn
once and replayed in every window, so windows are comparable. The first ``--warmup`` calls
warm caches and allocators; after them, resident memory (RSS) is sampled per window and p50
/ p99 latency is computed per window and path.

Checks (exit status 1 if missed):
* RSS at the end grows less than 5% over RSS right after warm-up;
* p99 of the last window is at most ``--p99-drift`` (default 1.5x) the first window's, for
  each path: a leak or an unbounded cache shows up as rising tail latency.

With ``--api`` the two paths are API backends against the local rerank server in its own
process (tests/support/fake_rerank_server.py): Jina through ``asyncio.run(arerank(...))``
once per call, a fresh event loop every time as scripts and some frameworks do, and Cohere
(the real SDK) blocking. Open file descriptors are then sampled per window too, and must
not grow by more than ``--fd-growth``: a client left behind by a closed loop keeps a socket.

    python benchmarks/soak.py                 # 20,000 calls
    python benchmarks/soak.py --calls 4000    # quicker look
    python benchmarks/soak.py --api --calls 4000 --window 400 --warmup 400
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so tests.support imports when run as a script
    sys.path.insert(0, str(ROOT))

from crossrank import Candidate, Reranker  # noqa: E402
from crossrank.backends.local.cpu import cpu_description  # noqa: E402
from tests.support.backends import CharWindowBackend, KeywordBackend  # noqa: E402

_WORDS = (
    "refund shipping berlin capital password reset warranty paris europe days return policy "
    "digital download file opened goods fourteen manufacturing defects security settings "
    "\u05d0\u05d1 \u4e2d\u6587 e\u0301 \U0001f44d"
)
VOCABULARY = tuple(_WORDS.split(" "))


class QuietKeywordBackend(KeywordBackend):
    """The keyword backend without its call log: a soak must not measure a test aid's list."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        from tests.support.backends import keyword_score

        return [keyword_score(query, text) for text in texts]


class QuietWindowBackend(CharWindowBackend):
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        from tests.support.backends import keyword_score

        return [keyword_score(query, text) for text in texts]


@dataclass(frozen=True)
class Shape:
    """One call's input shape, replayed in every window."""

    size: int
    duplicates: int
    long_texts: int
    seed: int


def draw_schedule(window: int, rng: random.Random) -> list[Shape]:
    shapes = []
    for _ in range(window):
        size = rng.choice([1, 2, 5, 10, 20, 50, 100, 200])
        shapes.append(
            Shape(
                size=size,
                duplicates=rng.randint(0, size // 5),
                long_texts=1 if rng.random() < 0.05 else 0,
                seed=rng.randrange(2**31),
            )
        )
    return shapes


def make_inputs(shape: Shape) -> tuple[str, list[tuple[str, str, float, dict[str, Any]]]]:
    """(query, [(text, id, first-stage score, metadata)]) for one call, built fresh."""
    rng = random.Random(shape.seed)
    query = " ".join(rng.choices(VOCABULARY, k=3))
    rows = []
    for index in range(shape.size):
        words = rng.choices(VOCABULARY, k=rng.randint(5, 40))
        if index < shape.long_texts:
            words = words * 200  # a few thousand words: the window path
        rows.append(
            (
                " ".join(words),
                f"doc-{index}",
                float(shape.size - index),
                {"source": f"kb/{index}.md", "position": index},
            )
        )
    for duplicate in range(shape.duplicates):  # same id again, other text
        text, doc_id, score, meta = rows[duplicate]
        rows.append((text + " again", doc_id, score - 0.5, meta))
    return query, rows


def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def open_fds() -> int:
    """Open file descriptors of this process (0 where /proc is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def build_api_paths() -> list[tuple[str, Callable[[Shape], int]]]:
    from crossrank.backends.cohere import CohereBackend
    from crossrank.backends.jina import JinaBackend

    key = "soak-key-not-secret"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_rerank_server", "--api-key", key],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    atexit.register(server.wait, 30)
    atexit.register(server.stdin.close)  # type: ignore[union-attr]
    url = server.stdout.readline().strip()  # type: ignore[union-attr]
    jina = Reranker(JinaBackend(api_key=key, base_url=f"{url}/v1"), top_n=10, strict=True)
    cohere = Reranker(CohereBackend(api_key=key, base_url=url), top_n=10, strict=True)

    def fresh_loop_call(shape: Shape) -> int:
        query, rows = make_inputs(shape)
        return len(asyncio.run(jina.arerank(query, [row[0] for row in rows])))

    def blocking_call(shape: Shape) -> int:
        query, rows = make_inputs(shape)
        return len(cohere.rerank(query, [row[0] for row in rows]))

    return [("jina asyncio.run", fresh_loop_call), ("cohere sync", blocking_call)]


def build_paths() -> list[tuple[str, Callable[[Shape], int]]]:
    engine = Reranker(QuietKeywordBackend(), top_n=10)

    def engine_call(shape: Shape) -> int:
        query, rows = make_inputs(shape)
        candidates = [
            Candidate(text, id=doc_id, first_stage_score=score, metadata=meta)
            for text, doc_id, score, meta in rows
        ]
        return len(engine.rerank(query, candidates))

    try:
        from langchain_core.documents import Document

        from crossrank.integrations.langchain import CrossrankCompressor
    except ImportError:
        windowed = Reranker(QuietWindowBackend(budget=128), top_n=10)

        def second_engine_call(shape: Shape) -> int:
            query, rows = make_inputs(shape)
            return len(windowed.rerank(query, [row[0] for row in rows]))

        return [("engine", engine_call), ("engine, windowed", second_engine_call)]

    compressor = CrossrankCompressor(reranker=Reranker(QuietKeywordBackend()), top_n=10)

    def adapter_call(shape: Shape) -> int:
        query, rows = make_inputs(shape)
        documents = [
            Document(page_content=text, id=doc_id, metadata={**meta, "score": score})
            for text, doc_id, score, meta in rows
        ]
        return len(compressor.compress_documents(documents, query))

    return [("engine", engine_call), ("langchain", adapter_call)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=2_000, help="calls per window")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--rss-growth", type=float, default=0.05)
    parser.add_argument("--p99-drift", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--api", action="store_true", help="API backends over local HTTP")
    parser.add_argument("--fd-growth", type=int, default=8, help="with --api: fds allowed")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}", flush=True)

    paths = build_api_paths() if args.api else build_paths()
    if args.window % len(paths) or args.warmup % args.window:
        parser.error(f"--window must be a multiple of {len(paths)} and divide --warmup")
    # Each window replays the same shapes on every path, so windows compare like with like.
    schedule = draw_schedule(args.window // len(paths), random.Random(args.seed))
    latencies: dict[str, list[float]] = {name: [] for name, _ in paths}
    windows: list[dict[str, Any]] = []
    rss_after_warmup: int | None = None
    fds_after_warmup = 0
    started = time.perf_counter()
    for call in range(args.calls):
        name, run = paths[call % len(paths)]
        shape = schedule[(call // len(paths)) % len(schedule)]
        began = time.perf_counter()
        kept = run(shape)
        latencies[name].append(time.perf_counter() - began)
        assert 1 <= kept <= 10, f"call {call} kept {kept} results"
        done = call + 1
        if done == args.warmup:
            gc.collect()
            rss_after_warmup = rss_bytes()
            fds_after_warmup = open_fds()
            latencies = {key: [] for key in latencies}
        elif done > args.warmup and (done - args.warmup) % args.window == 0:
            gc.collect()
            row: dict[str, Any] = {"calls": done, "rss": rss_bytes(), "fds": open_fds()}
            for key, values in latencies.items():
                row[f"{key} p50"] = percentile(values, 0.50) * 1000
                row[f"{key} p99"] = percentile(values, 0.99) * 1000
            windows.append(row)
            latencies = {key: [] for key in latencies}
    elapsed = time.perf_counter() - started
    if rss_after_warmup is None or not windows:
        print("not enough calls for one window after warm-up", file=sys.stderr)
        return 2

    names = [name for name, _ in paths]
    first = windows[0]
    header = f"{'calls':>7} {'RSS MiB':>8} {'vs warm':>8} {'fds':>5}"
    for name in names:
        header += f" | {name + ' p50 ms':>16} {name + ' p99 ms':>16} {'p99 vs first':>12}"
    print(
        f"soak: {args.calls} calls ({', '.join(names)} alternating), "
        f"window {args.window}, warm-up {args.warmup}, {elapsed:.1f}s total"
    )
    print(f"RSS after warm-up: {rss_after_warmup / 2**20:.1f} MiB")
    print(header)
    print("-" * len(header))
    for row in windows:
        line = (
            f"{row['calls']:>7} {row['rss'] / 2**20:>8.1f} {row['rss'] / rss_after_warmup:>7.3f}x"
            f" {row['fds']:>5}"
        )
        for name in names:
            line += (
                f" | {row[name + ' p50']:>16.3f} {row[name + ' p99']:>16.3f}"
                f" {row[name + ' p99'] / first[name + ' p99']:>11.2f}x"
            )
        print(line)

    growth = windows[-1]["rss"] / rss_after_warmup - 1.0
    drifts = {name: windows[-1][name + " p99"] / first[name + " p99"] for name in names}
    failures = []
    if growth >= args.rss_growth:
        failures.append(f"RSS grew {growth:.1%} (limit {args.rss_growth:.0%})")
    fd_growth = windows[-1]["fds"] - fds_after_warmup
    if args.api and fd_growth > args.fd_growth:
        failures.append(f"open fds grew by {fd_growth} (limit {args.fd_growth})")
    for name, drift in drifts.items():
        if drift > args.p99_drift:
            failures.append(f"{name} p99 drifted {drift:.2f}x (limit {args.p99_drift:.2f}x)")
    print()
    print(f"RSS growth after warm-up: {growth:+.2%} (limit {args.rss_growth:.0%})")
    print(f"open fds after warm-up: {fds_after_warmup}, at the end: {windows[-1]['fds']}")
    for name, drift in drifts.items():
        print(f"{name} p99 last/first window: {drift:.2f}x (limit {args.p99_drift:.2f}x)")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
