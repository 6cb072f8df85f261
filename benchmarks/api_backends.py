"""Throughput and latency of every API backend against a local rerank server.

The server (tests/support/fake_rerank_server.py, run in its own process as a real API would
be) speaks each provider's wire format on
127.0.0.1, waits ``--latency`` seconds per request and answers a ``--rate-429`` share of
requests with 429 + ``Retry-After``. Each provider (Cohere through its SDK; Jina, TEI,
Cohere-compatible, Voyage and Mixedbread through httpx) reranks ``--queries`` queries of
``--candidates`` candidates through :class:`crossrank.Reranker` twice: one blocking call after
another (the baseline), then all at once with ``asyncio.gather`` behind a semaphore of
``--concurrency``. Every result is checked against the server's deterministic scoring: a lost,
duplicated or misordered candidate counts as a failure.

Floors (exit status 1 if missed): async throughput >= 5x sequential, zero lost or misordered
results.

    python benchmarks/api_backends.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so tests.support imports when run as a script
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from crossrank import Reranker, RerankResult  # noqa: E402
from crossrank.backends import backend_class  # noqa: E402
from tests.support.fake_rerank_server import (  # noqa: E402
    PROVIDERS,
    RESET_PATH,
    STATS_PATH,
    WIRES,
    expected_scores,
)

API_KEY = "bench-key-not-secret"
MIN_SPEEDUP = 5.0


@dataclass
class Run:
    provider: str
    mode: str
    wall_s: float
    latencies_ms: list[float]
    requests: int
    lost: int
    misordered: int

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def make_workload(queries: int, candidates: int) -> list[tuple[str, list[str]]]:
    return [
        (
            f"query {index}: which passage answers topic {index % 13}?",
            [
                f"passage {index}-{slot} on topic {(index + slot) % 13}"
                for slot in range(candidates)
            ],
        )
        for index in range(queries)
    ]


def check(query: str, texts: list[str], result: RerankResult) -> tuple[int, int]:
    """(lost, misordered) for one result, judged by the server's deterministic scores."""
    truth = expected_scores(query, texts)
    returned = [item.input_index for item in result.ranked]
    lost = len(texts) - len(set(returned)) if result.report.status == "reranked" else len(texts)
    expected_order = sorted(range(len(texts)), key=lambda index: -truth[index])
    misordered = sum(1 for got, want in zip(returned, expected_order, strict=False) if got != want)
    return lost, misordered


class ServerProcess:
    """The fake server in its own process, as a real API would be: its CPU and GIL are not
    the client's, so the numbers measure the client."""

    def __init__(self, url: str) -> None:
        self.url = url

    def base_url(self, provider: str) -> str:
        return self.url + WIRES[provider].base_path

    def reset(self) -> None:
        httpx.post(f"{self.url}{RESET_PATH}").raise_for_status()

    def request_count(self) -> int:
        return int(httpx.get(f"{self.url}{STATS_PATH}").json()["requests"])


@contextlib.contextmanager
def server_process(args: argparse.Namespace, seed: int) -> Iterator[ServerProcess]:
    command = [
        sys.executable, "-m", "tests.support.fake_rerank_server",
        "--api-key", API_KEY, "--latency", str(args.latency), "--rate-429", str(args.rate_429),
        "--retry-after", args.retry_after, "--seed", str(seed),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield ServerProcess(process.stdout.readline().strip())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def make_reranker(provider: str, server: ServerProcess, args: argparse.Namespace) -> Reranker:
    backend = backend_class(provider)(
        api_key=API_KEY,
        base_url=server.base_url(provider),
        http={
            "max_retries": 10,
            "backoff_base": args.backoff_base,
            "backoff_max": 1.0,
            "max_connections": args.concurrency,
        },
    )
    # strict: a failed call must show up as an error here, not as a quiet fallback.
    return Reranker(backend, strict=True)


def run_sequential(
    provider: str, workload: list[tuple[str, list[str]]], args: argparse.Namespace
) -> Run:
    with server_process(args, seed=1) as server:
        reranker = make_reranker(provider, server, args)
        reranker.rerank(*workload[0])  # warm the connection; not measured
        server.reset()
        latencies: list[float] = []
        lost = misordered = 0
        started = time.perf_counter()
        for query, texts in workload:
            call_started = time.perf_counter()
            result = reranker.rerank(query, texts)
            latencies.append((time.perf_counter() - call_started) * 1000)
            call_lost, call_misordered = check(query, texts, result)
            lost += call_lost
            misordered += call_misordered
        wall = time.perf_counter() - started
        requests = server.request_count()
        return Run(provider, "sequential", wall, latencies, requests, lost, misordered)


def run_async(
    provider: str, workload: list[tuple[str, list[str]]], args: argparse.Namespace
) -> Run:
    with server_process(args, seed=2) as server:
        reranker = make_reranker(provider, server, args)

        async def main() -> Run:
            await reranker.arerank(*workload[0])  # warm the client; not measured
            server.reset()
            gate = asyncio.Semaphore(args.concurrency)
            latencies: list[float] = []

            async def one(query: str, texts: list[str]) -> RerankResult:
                async with gate:
                    call_started = time.perf_counter()
                    result = await reranker.arerank(query, texts)
                    latencies.append((time.perf_counter() - call_started) * 1000)
                    return result

            started = time.perf_counter()
            results = await asyncio.gather(*(one(query, texts) for query, texts in workload))
            wall = time.perf_counter() - started
            lost = misordered = 0
            for (query, texts), result in zip(workload, results, strict=True):
                call_lost, call_misordered = check(query, texts, result)
                lost += call_lost
                misordered += call_misordered
            requests = server.request_count()
            await reranker.backend.aclose()  # type: ignore[attr-defined]
            return Run(provider, "async", wall, latencies, requests, lost, misordered)

        return asyncio.run(main())


def bound_overhead(
    provider: str, args: argparse.Namespace, calls: int = 300
) -> tuple[float, float]:
    """Median microseconds of one blocking request, sent directly and through ``score``.

    ``score`` runs each attempt on a worker thread so that ``timeout`` bounds the whole
    exchange; the direct send is the same request and answer check without that bound (and
    without the retry loop around it). A server with no latency and no 429s makes the
    difference as visible as it can be.
    """
    quiet = argparse.Namespace(**{**vars(args), "latency": 0.0, "rate_429": 0.0})
    texts = [f"passage {slot}" for slot in range(10)]
    with server_process(quiet, seed=3) as server:
        backend = make_reranker(provider, server, quiet).backend
        raw_send, parse = backend._send, backend._parsed  # type: ignore[attr-defined]
        timings: dict[str, list[float]] = {"direct": [], "bounded": []}
        for _ in range(calls):
            for name, request in (
                ("direct", lambda: parse(raw_send("q", texts, 30.0), len(texts))),
                ("bounded", lambda: backend.score("q", texts)),
            ):
                started = time.perf_counter()
                request()
                timings[name].append((time.perf_counter() - started) * 1e6)
        backend.close()  # type: ignore[attr-defined]
    return statistics.median(timings["direct"]), statistics.median(timings["bounded"])


def cpu_summary() -> str:
    """The CPU model and the SIMD flags that matter for comparing runs across machines."""
    model, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = set(value.split())
    shown = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
             if flag in flags]  # fmt: skip
    return f"{model}; {', '.join(shown) or 'no AVX2'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    parser.add_argument("--rate-429", type=float, default=0.2, help="share answered 429")
    parser.add_argument("--retry-after", default="0.05", help="Retry-After sent with a 429")
    parser.add_argument("--backoff-base", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16, help="async calls in flight")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    args = parser.parse_args()

    workload = make_workload(args.queries, args.candidates)
    print(f"CPU: {cpu_summary()}")
    print(
        f"{args.queries} queries x {args.candidates} candidates; server latency "
        f"{args.latency * 1000:.0f} ms/request, {args.rate_429:.0%} answered 429 "
        f"(Retry-After {args.retry_after}s); async concurrency {args.concurrency}\n"
    )
    header = (
        f"{'provider':<17} {'mode':<10} {'wall s':>7} {'q/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'requests':>8} {'lost':>5} {'misord':>6} {'x seq':>6}"
    )
    print(header)
    print("-" * len(header))
    failures: list[str] = []
    for provider in args.providers:
        baseline = run_sequential(provider, workload, args)
        concurrent = run_async(provider, workload, args)
        for run in (baseline, concurrent):
            ratio = run.throughput / baseline.throughput
            print(
                f"{run.provider:<17} {run.mode:<10} {run.wall_s:>7.2f} {run.throughput:>7.1f} "
                f"{run.percentile(50):>7.1f} {run.percentile(95):>7.1f} "
                f"{run.percentile(99):>7.1f} {run.requests:>8d} {run.lost:>5d} "
                f"{run.misordered:>6d} {ratio:>6.2f}"
            )
            if run.lost or run.misordered:
                failures.append(
                    f"{provider} {run.mode}: {run.lost} lost, {run.misordered} misordered"
                )
        speedup = concurrent.throughput / baseline.throughput
        if speedup < MIN_SPEEDUP:
            failures.append(f"{provider}: async is {speedup:.2f}x sequential, floor {MIN_SPEEDUP}x")
    print("\nrequests beyond one per query are 429s that were retried; latencies are per query.")
    print("\nblocking request, 10 documents, server without latency (median of 300):")
    print(f"{'provider':<17} {'direct us':>10} {'score us':>10} {'x direct':>9}")
    for provider in args.providers:
        direct_us, bounded_us = bound_overhead(provider, args)
        ratio = bounded_us / direct_us
        print(f"{provider:<17} {direct_us:>10.0f} {bounded_us:>10.0f} {ratio:>9.2f}")
    if failures:
        print("FLOORS MISSED:\n  " + "\n  ".join(failures))
        return 1
    print(f"floors met: async >= {MIN_SPEEDUP:g}x sequential, no lost or misordered results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
