"""What a framework adapter costs on top of the engine call it wraps.

For each framework that is installed (LangChain, LlamaIndex, Haystack when
``crossrank.integrations.haystack`` exists), the same 100 first-stage hits are reranked
twice per round, in alternating order: once through the adapter, with the framework's own
document objects, and once through ``Reranker.rerank`` directly with ready ``Candidate``s.
The difference is the adapter's translation (objects -> candidates -> new objects, events).

The backend is a fast deterministic term-overlap scorer, so the engine call is as cheap as it
gets and the overhead is not hidden behind model time. Floor: an adapter costs under 5% of
the engine call, or under 2 ms. Timings are medians over ``--repeats`` rounds.

Run::

    python benchmarks/adapter_overhead.py            # 100 candidates, 300 rounds
    python benchmarks/adapter_overhead.py --candidates 200 --repeats 100
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from crossrank import BaseBackend, Candidate, Reranker
from crossrank.backends.local.cpu import cpu_description

QUERY = "how long does a refund for a damaged parcel take"
WORDS = [
    "refund",
    "parcel",
    "damaged",
    "shipping",
    "password",
    "invoice",
    "warranty",
    "subscription",
    "europe",
    "delivery",
    "return",
    "replacement",
    "account",
    "settings",
    "payment",
    "card",
    "digital",
    "download",
    "licence",
    "days",
    "weeks",
]
FLOOR_RATIO = 0.05
FLOOR_MS = 2.0


class OverlapBackend(BaseBackend):
    """Counts query words in each text: deterministic, and far cheaper than any model."""

    name = "overlap"

    @property
    def model_name(self) -> str:
        return "word-overlap"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        query_words = set(query.lower().split())
        return [float(len(query_words.intersection(text.lower().split()))) for text in texts]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score(query, texts)


def corpus(size: int) -> list[tuple[str, str, float, dict[str, Any]]]:
    """(id, text, first-stage score, metadata) rows, best first-stage score first."""
    rows = []
    for index in range(size):
        words = [WORDS[(index * 7 + step * 3) % len(WORDS)] for step in range(24)]
        rows.append(
            (
                f"doc-{index}",
                " ".join(words),
                1.0 - index / size,
                {"source": f"kb/{index}.md", "section": {"chapter": index % 5, "tags": ["kb"]}},
            )
        )
    return rows


@dataclass(frozen=True)
class Case:
    framework: str
    mode: str
    adapter: Callable[[], Any]
    engine: Callable[[], Any]


def langchain_cases(rows: Any, reranker: Reranker, top_n: int) -> list[Case]:
    from langchain_core.documents import Document

    from crossrank.integrations.langchain import CrossrankCompressor

    documents = [
        Document(page_content=text, id=doc_id, metadata={**meta, "score": score})
        for doc_id, text, score, meta in rows
    ]
    candidates = [
        Candidate(text=text, id=doc_id, first_stage_score=score, metadata=meta)
        for doc_id, text, score, meta in rows
    ]
    compressor = CrossrankCompressor(reranker=reranker, top_n=top_n)
    return [
        Case(
            "langchain",
            "sync",
            lambda: compressor.compress_documents(documents, QUERY),
            lambda: reranker.rerank(QUERY, candidates, top_n=top_n),
        ),
        Case(
            "langchain",
            "async",
            _sync(lambda: compressor.acompress_documents(documents, QUERY)),
            _sync(lambda: reranker.arerank(QUERY, candidates, top_n=top_n)),
        ),
    ]


def llama_index_cases(rows: Any, reranker: Reranker, top_n: int) -> list[Case]:
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from crossrank.integrations.llama_index import CrossrankPostprocessor

    nodes = [
        NodeWithScore(node=TextNode(text=text, id_=doc_id, metadata=meta), score=score)
        for doc_id, text, score, meta in rows
    ]
    # The engine baseline reads the very text the adapter hands it (metadata included).
    candidates = [
        Candidate(
            text=item.node.get_content(metadata_mode=MetadataMode.EMBED),
            id=item.node.node_id,
            first_stage_score=item.score,
        )
        for item in nodes
    ]
    postprocessor = CrossrankPostprocessor(reranker=reranker, top_n=top_n)
    bundle = QueryBundle(QUERY)
    return [
        Case(
            "llama-index",
            "sync",
            lambda: postprocessor.postprocess_nodes(nodes, query_bundle=bundle),
            lambda: reranker.rerank(QUERY, candidates, top_n=top_n),
        ),
        Case(
            "llama-index",
            "async",
            _sync(lambda: postprocessor.apostprocess_nodes(nodes, query_bundle=bundle)),
            _sync(lambda: reranker.arerank(QUERY, candidates, top_n=top_n)),
        ),
    ]


def haystack_cases(rows: Any, reranker: Reranker, top_n: int) -> list[Case]:
    from haystack import Document

    from crossrank.integrations.haystack import CrossrankRanker

    documents = [
        Document(id=doc_id, content=text, meta=meta, score=score)
        for doc_id, text, score, meta in rows
    ]
    candidates = [
        Candidate(text=text, id=doc_id, first_stage_score=score, metadata=meta)
        for doc_id, text, score, meta in rows
    ]
    ranker = CrossrankRanker(backend=reranker.backend, top_k=top_n)
    ranker.warm_up()
    return [
        Case(
            "haystack",
            "sync",
            lambda: ranker.run(query=QUERY, documents=documents),
            lambda: reranker.rerank(QUERY, candidates, top_n=top_n),
        ),
        Case(
            "haystack",
            "async",
            _sync(lambda: ranker.run_async(query=QUERY, documents=documents)),
            _sync(lambda: reranker.arerank(QUERY, candidates, top_n=top_n)),
        ),
    ]


def _sync(make: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    """One event loop for all async rounds, so loop start-up is not part of any timing."""
    loop = _LOOP

    def run() -> Any:
        return loop.run_until_complete(make())

    return run


_LOOP = asyncio.new_event_loop()

FRAMEWORKS: dict[str, tuple[str, Callable[[Any, Reranker, int], list[Case]]]] = {
    "langchain": ("langchain_core", langchain_cases),
    "llama-index": ("llama_index.core", llama_index_cases),
    "haystack": ("haystack", haystack_cases),
}


def available(framework: str) -> str | None:
    """``None`` when the framework can be benchmarked, else why not."""
    module, _ = FRAMEWORKS[framework]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{module} is not installed"
    adapter = f"crossrank.integrations.{framework.replace('-', '_')}"
    if importlib.util.find_spec(adapter) is None:
        return f"{adapter} does not exist yet"
    return None


def median_ms(timings: list[float]) -> float:
    return statistics.median(timings) * 1000.0


def measure(case: Case, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        case.adapter()
        case.engine()
    adapter_times: list[float] = []
    engine_times: list[float] = []
    for round_index in range(repeats):
        # Alternate which goes first so cache and allocator effects fall on both equally.
        order = (
            (case.adapter, adapter_times),
            (case.engine, engine_times),
        )
        if round_index % 2:
            order = order[::-1]
        for call, sink in order:
            started = time.perf_counter()
            call()
            sink.append(time.perf_counter() - started)
    return median_ms(engine_times), median_ms(adapter_times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_description()}", flush=True)
    logging.getLogger("crossrank").setLevel(logging.ERROR)

    rows = corpus(args.candidates)
    print(
        f"adapter overhead: {args.candidates} candidates, top_n={args.top_n}, "
        f"median of {args.repeats} rounds, backend=overlap (deterministic, no model)"
    )
    header = (
        f"{'framework':<12} {'mode':<6} {'engine ms':>10} {'adapter ms':>11} "
        f"{'overhead ms':>12} {'ratio':>7}  floor (<{FLOOR_RATIO:.0%} or <{FLOOR_MS:g} ms)"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for framework, (_, build) in FRAMEWORKS.items():
        missing = available(framework)
        if missing is not None:
            print(f"{framework:<12} skipped: {missing}")
            continue
        reranker = Reranker(OverlapBackend())
        for case in build(rows, reranker, args.top_n):
            engine_ms, adapter_ms = measure(case, args.repeats, args.warmup)
            overhead = adapter_ms - engine_ms
            ratio = adapter_ms / engine_ms
            ok = overhead < FLOOR_MS or overhead < FLOOR_RATIO * engine_ms
            failures += not ok
            print(
                f"{case.framework:<12} {case.mode:<6} {engine_ms:>10.3f} {adapter_ms:>11.3f} "
                f"{overhead:>12.3f} {ratio:>6.2f}x  {'ok' if ok else 'OVER'}"
            )
    _LOOP.close()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
