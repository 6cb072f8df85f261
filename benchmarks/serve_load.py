"""Load on ``crossrank serve``: closed-loop clients against the served engine and in-process.

Each cell runs ``--seconds`` of closed-loop load: C clients each send a request, wait for the
answer, check it and send the next. Cells:

* ``in-process, sequential`` - ``Reranker.rerank`` in a loop in this process: the baseline
  every ratio is taken against;
* ``served, micro-batch off|on`` at each concurrency - ``crossrank serve`` in a subprocess
  on 127.0.0.1, clients here over HTTP (httpx, keep-alive);
* ``ray serve, N replicas`` (``--ray``) - the same app as a Ray Serve deployment.

Every answer is checked against the in-process engine's order for the same query: a wrong
or lost (failed / timed out) answer is counted, a 429 is counted as refused. A separate
``http hop`` row serves a fast term-overlap backend with 100 candidates at concurrency 1, so
the model's time does not hide what the HTTP round trip costs.

Floors (from the issue): served throughput at concurrency 16 >= in-process sequential;
HTTP hop < 5 ms p50 for 100 candidates with a fast backend; zero lost or wrong answers.

Run::

    python benchmarks/serve_load.py                       # MiniLM cross-encoder if present
    python benchmarks/serve_load.py --seconds 3 --concurrency 1 4 16 64 --ray
    python benchmarks/serve_load.py --config my-reranker.json --candidates 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adapter_overhead import WORDS as ADAPTER_WORDS

from crossrank import BaseBackend, Reranker
from crossrank.serve.server import free_port, wait_ready

HERE = Path(__file__).resolve().parent
SHARED_MODEL = HERE.parent.parent / "shared" / "models" / "minilm-ce-scifact"
# adapter_overhead's vocabulary, plus words the synthetic HTTP-hop queries use.
WORDS = [
    *ADAPTER_WORDS,
    "capital",
    "france",
    "paris",
    "berlin",
    "germany",
    "model",
    "query",
    "passage",
    "rerank",
    "retrieval",
]


class FastOverlapBackend(BaseBackend):
    """Counts query words in each text: deterministic and far cheaper than any model."""

    name = "overlap"

    @property
    def model_name(self) -> str:
        return "word-overlap"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        words = set(query.split())
        return [len(words.intersection(text.split())) - 0.001 * len(text) for text in texts]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score(query, texts)


def workload(queries: int, candidates: int) -> list[tuple[str, list[str]]]:
    """The demo knowledge base's queries against its passages (real support-text lengths).

    Each request gets ``candidates`` passages, rotated per query so requests differ; the
    synthetic word lists of the HTTP-hop row (``synthetic_workload``) stand in when the
    demo data is missing.
    """
    try:
        from crossrank.demo import load_knowledge_base
    except ImportError:
        return synthetic_workload(queries, candidates)
    base = load_knowledge_base()
    passages = list(base.passages.values())
    load = []
    for q in range(queries):
        query = base.queries[q % len(base.queries)].text
        start = (q * 5) % len(passages)
        texts = [passages[(start + c) % len(passages)] for c in range(candidates)]
        if candidates > len(passages):  # repeats must stay distinct texts for deduplication
            texts = [f"{text} ({c // len(passages)})" for c, text in enumerate(texts)]
        load.append((query, texts))
    return load


def synthetic_workload(queries: int, candidates: int) -> list[tuple[str, list[str]]]:
    """Deterministic queries of 4 words and candidates of 12-40 words."""
    pairs = []
    for q in range(queries):
        query = " ".join(WORDS[(q * 7 + i * 3) % len(WORDS)] for i in range(4))
        texts = [
            " ".join(
                WORDS[(q * 13 + c * 5 + i * 11) % len(WORDS)] for i in range(12 + (c * 7) % 29)
            )
            for c in range(candidates)
        ]
        pairs.append((query, texts))
    return pairs


def cpu_line() -> str:
    wanted = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma"}
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = wanted.intersection(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"CPU: {platform.machine()}, {os.cpu_count()} cores, "
        f"flags {' '.join(sorted(flags)) or '?'}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


@dataclass
class Cell:
    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    wrong: int = 0
    lost: int = 0
    elapsed: float = 0.0
    pairs: int = 0
    #: why answers were lost: HTTP status or exception name -> count
    errors: dict[str, int] = field(default_factory=dict)

    def lose(self, reason: str) -> None:
        self.lost += 1
        self.errors[reason] = self.errors.get(reason, 0) + 1

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.refused + self.wrong + self.lost

    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def expected_orders(reranker: Reranker, load: list[tuple[str, list[str]]]) -> list[list[int]]:
    return [[item.input_index for item in reranker.rerank(q, texts)] for q, texts in load]


def run_in_process(
    reranker: Reranker, load: list[tuple[str, list[str]]], seconds: float, candidates: int
) -> Cell:
    cell = Cell("in-process, sequential", 1)
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        query, texts = load[i % len(load)]
        t0 = time.perf_counter()
        reranker.rerank(query, texts)
        cell.latencies.append(time.perf_counter() - t0)
        i += 1
    cell.elapsed = time.perf_counter() - started
    cell.pairs = len(cell.latencies) * candidates
    return cell


async def closed_loop(
    url: str,
    name: str,
    concurrency: int,
    load: list[tuple[str, list[str]]],
    orders: list[list[int]],
    seconds: float,
) -> Cell:
    import httpx

    cell = Cell(name, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                i = next(counter) % len(load)
                query, texts = load[i]
                t0 = time.perf_counter()
                try:
                    answer = await client.post(
                        "/v2/rerank", json={"model": "m", "query": query, "documents": texts}
                    )
                except httpx.HTTPError as exc:
                    cell.lose(type(exc).__name__)
                    continue
                if answer.status_code == 429:
                    cell.refused += 1
                    await asyncio.sleep(0.01)
                    continue
                if answer.status_code != 200:
                    cell.lose(f"HTTP {answer.status_code}")
                    continue
                if [r["index"] for r in answer.json()["results"]] != orders[i]:
                    cell.wrong += 1
                    continue
                cell.latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        cell.elapsed = time.perf_counter() - started
    cell.pairs = len(cell.latencies) * len(load[0][1])
    return cell


class ServedProcess:
    """``crossrank serve`` in a subprocess on a free loopback port."""

    def __init__(self, config: dict[str, Any], extra: Sequence[str] = ()) -> None:
        self.directory = tempfile.TemporaryDirectory()
        path = Path(self.directory.name) / "config.json"
        path.write_text(json.dumps(config))
        self.port = free_port()
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crossrank.cli",
                "serve",
                "--config",
                str(path),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url, timeout_s=180)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.directory.cleanup()


def engine_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.config:
        return json.loads(Path(args.config).read_text()), f"config {args.config}"
    if SHARED_MODEL.is_dir():
        return (
            {"backend": "cross-encoder", "backend_options": {"model": str(SHARED_MODEL)}},
            f"cross-encoder {SHARED_MODEL.name} (MiniLM-L6, fp32)",
        )
    sys.path.insert(0, str(HERE.parent))
    from tests.support.tiny_models import build_tiny_cross_encoder

    tiny = build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "tiny")
    return {
        "backend": "cross-encoder",
        "backend_options": {"model": str(tiny)},
    }, "tiny cross-encoder"


def with_micro_batch(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config, backend_options=dict(config.get("backend_options") or {}, micro_batch=True))


def print_table(cells: list[Cell], baseline: Cell) -> None:
    base = baseline.throughput()
    print(
        f"{'cell':<34} {'C':>3} {'req/s':>8} {'pairs/s':>9} {'x base':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8} {'429 %':>6} {'wrong':>5} {'lost':>5}"
    )
    for cell in cells:
        share = 100.0 * cell.refused / cell.sent if cell.sent else 0.0
        ratio = cell.throughput() / base if base else float("nan")
        print(
            f"{cell.name:<34} {cell.concurrency:>3} {cell.throughput():>8.1f} "
            f"{cell.pairs / cell.elapsed if cell.elapsed else 0:>9.0f} {ratio:>7.2f} "
            f"{cell.percentile(0.5):>8.1f} {cell.percentile(0.95):>8.1f} "
            f"{cell.percentile(0.99):>8.1f} "
            f"{share:>6.1f} {cell.wrong:>5} {cell.lost:>5}"
        )
    for cell in cells:
        if cell.errors:
            print(f"  lost in {cell.name!r} at C={cell.concurrency}: {cell.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="reranker config JSON to serve")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-queue", type=int, default=32, help="server admission queue")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also Ray Serve, 1 and 2 replicas")
    parser.add_argument("--skip-hop", action="store_true", help="skip the HTTP-hop row")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads here and in each server"
    )
    args = parser.parse_args()
    if args.threads is not None:  # pairs/s per core: --threads 1
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)

    print(cpu_line())
    config, label = engine_config(args)
    print(
        f"engine: {label}; {args.candidates} candidates per request; {args.seconds:.0f}s per "
        f"cell; torch threads {args.threads or 'default'}"
    )
    load = workload(args.queries, args.candidates)
    reranker = Reranker.from_config(config)
    orders = expected_orders(reranker, load)
    baseline = run_in_process(reranker, load, args.seconds, args.candidates)
    cells = [baseline]
    limits = ["--max-in-flight", str(args.max_in_flight), "--max-queue", str(args.max_queue)]
    for micro, served_config in (("off", config), ("on", with_micro_batch(config))):
        server = ServedProcess(served_config, limits)
        try:
            for concurrency in args.concurrency:
                name = f"served, micro-batch {micro}"
                cells.append(
                    asyncio.run(
                        closed_loop(server.url, name, concurrency, load, orders, args.seconds)
                    )
                )
        finally:
            server.close()
    if args.ray:
        cells.extend(ray_cells(config, load, orders, args))
    print()
    print_table(cells, baseline)

    if not args.skip_hop:
        hop_load = synthetic_workload(args.queries, 100)
        fast = {"backend": "serve_load:FastOverlapBackend"}
        fast_reranker = Reranker(FastOverlapBackend())
        hop_orders = expected_orders(fast_reranker, hop_load)
        local = run_in_process(fast_reranker, hop_load, args.seconds, 100)
        local.name = "fast backend, in-process"
        server = ServedProcess(fast)
        try:
            served = asyncio.run(
                closed_loop(
                    server.url, "fast backend, served", 1, hop_load, hop_orders, args.seconds
                )
            )
        finally:
            server.close()
        print()
        print("HTTP hop (100 candidates, term-overlap backend, concurrency 1)")
        print_table([local, served], local)
        print(f"HTTP hop overhead p50: {served.percentile(0.5) - local.percentile(0.5):.2f} ms")


def ray_cells(
    config: dict[str, Any],
    load: list[tuple[str, list[str]]],
    orders: list[list[int]],
    args: argparse.Namespace,
) -> list[Cell]:
    import ray
    from ray import serve

    from crossrank.serve.ray_serve import APP_NAME, build_deployment
    from crossrank.serve.settings import ServeSettings

    cells = []
    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    settings = ServeSettings(max_in_flight=args.max_in_flight, max_queue=args.max_queue)
    try:
        for replicas in (1, 2):  # redeployed in place: the proxy and its port stay
            deployment = build_deployment(config, settings, replicas=replicas, num_cpus=0.5)
            serve.run(deployment, name=APP_NAME, route_prefix="/")
            wait_ready(url, timeout_s=180)
            time.sleep(2.0)  # let every replica finish its warm-up, not only the first
            for concurrency in args.concurrency:
                name = f"ray serve, {replicas} replica(s)"
                cells.append(
                    asyncio.run(closed_loop(url, name, concurrency, load, orders, args.seconds))
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    return cells


if __name__ == "__main__":
    main()
