"""crossrank against the rerankers every framework ships, same model, same 100 candidates.

Each peer loads the same local cross-encoder (see ``_local_workload.model_path``) and
reranks the same 100 passages for one query, through its own public API and at its own
defaults (batch size included); crossrank runs through ``Reranker.rerank`` (the whole
engine: validation, windowing, normalization) in its default setting (torch fp32) and in
the fastest setting that passes the fidelity gate (``precision="auto"``). Calls are timed
interleaved, medians reported, ratios against LangChain's ``CrossEncoderReranker`` (the
most common baseline) and against each peer.

Peers, each skipped with a reason when not installed:
- LangChain: ``langchain_classic`` ``CrossEncoderReranker`` + ``langchain_community``
  ``HuggingFaceCrossEncoder``;
- LlamaIndex: ``llama-index-postprocessor-sbert-rerank`` ``SentenceTransformerRerank``;
- Haystack: ``sentence-transformers-haystack`` ``SentenceTransformersSimilarityRanker``,
  torch backend, and its best CPU configurations: ONNX, ONNX int8 quantized for this CPU,
  OpenVINO. Those need ``optimum-onnx`` / ``optimum-intel``, which pin ``transformers<4.58``
  and cannot live in crossrank's venv; with ``--haystack-onnx-python PY`` they are timed in
  that second venv by ``_haystack_onnx_peer.py`` and carried over through the torch
  backend, timed in both;
- ``rerankers``: ``Reranker(path, model_type="cross-encoder")``.

Run::

    python benchmarks/peers.py --repeats 5
    python benchmarks/peers.py --haystack-onnx-python .cache/peer-venv/bin/python

A venv for the Haystack ONNX peer (CPU torch first, as everywhere here)::

    python3 -m venv .cache/peer-venv && .cache/peer-venv/bin/pip install torch==2.13.0 &&
    .cache/peer-venv/bin/pip install "transformers<4.58" "sentence-transformers>=5.6,<6" \
        "sentence-transformers-haystack==1.0.0" haystack-ai "optimum-onnx[onnxruntime]" \
        "optimum-intel[openvino]"
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload
from local_backend import VARIANTS

from crossrank import Reranker
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local.cpu import cpu_description
from crossrank.registry import ModelRegistry

Runner = Callable[[], Any]


def langchain_peer(path: str, query: str, texts: list[str]) -> Runner:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document

    model = HuggingFaceCrossEncoder(model_name=path, model_kwargs={"device": "cpu"})
    compressor = CrossEncoderReranker(model=model, top_n=len(texts))
    documents = [Document(page_content=text) for text in texts]
    return lambda: compressor.compress_documents(documents, query)


def llama_index_peer(path: str, query: str, texts: list[str]) -> Runner:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.sbert_rerank import SentenceTransformerRerank

    postprocessor = SentenceTransformerRerank(model=path, device="cpu", top_n=len(texts))
    nodes = [NodeWithScore(node=TextNode(text=text), score=0.0) for text in texts]
    bundle = QueryBundle(query_str=query)
    return lambda: postprocessor.postprocess_nodes(nodes, query_bundle=bundle)


def haystack_peer(path: str, query: str, texts: list[str], *, backend: str) -> Runner:
    from haystack import Document
    from haystack_integrations.components.rankers.sentence_transformers import (
        SentenceTransformersSimilarityRanker,
    )

    ranker = SentenceTransformersSimilarityRanker(
        model=path,
        top_k=len(texts),
        backend=backend,  # type: ignore[arg-type]
    )
    ranker.warm_up()
    documents = [Document(content=text) for text in texts]
    return lambda: ranker.run(query=query, documents=documents)


def rerankers_peer(path: str, query: str, texts: list[str]) -> Runner:
    from rerankers import Reranker as PeerReranker

    ranker = PeerReranker(path, model_type="cross-encoder", device="cpu", verbose=0)
    return lambda: ranker.rank(query=query, docs=texts)


def crossrank_runner(path: str, query: str, texts: list[str], **options: Any) -> tuple[Runner, str]:
    backend = CrossEncoderBackend(
        path, device="cpu", local_files_only=True, registry=ModelRegistry(), **options
    )
    backend.load()
    reranker = Reranker(backend)
    return (lambda: reranker.rerank(query, texts)), backend.variant.label


HAYSTACK_TORCH = "haystack ST ranker (torch)"
HAYSTACK_ONNX = "haystack ST ranker (onnx)"


def haystack_onnx_in_venv(
    python: str, path: str, query: str, texts: list[str], *, repeats: int
) -> dict[str, Any]:
    """Run ``_haystack_onnx_peer.py`` under another venv's Python; its timings as JSON."""
    script = Path(__file__).resolve().parent / "_haystack_onnx_peer.py"
    request = {"model": path, "query": query, "texts": texts, "repeats": repeats}
    completed = subprocess.run(
        [python, str(script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr.strip().splitlines()[-1][:200])
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--cache-dir", default=None, help="ONNX cache (default: a temp dir)")
    parser.add_argument(
        "--haystack-onnx-python",
        default=None,
        help="Python of a venv with haystack-ai + optimum-onnx + optimum-intel, for Haystack's "
        "ONNX (fp32, int8) and OpenVINO backends",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["torch-int8", "openvino-int8"],
        choices=[name for name in VARIANTS if name != "auto"],
        help="explicit crossrank variants timed beside auto's choice (default: the two that "
        "met the fidelity rule on the shared collections; see docs/speed.md)",
    )
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_description()}", flush=True)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    import torch
    from transformers import AutoTokenizer

    path, description = workload.model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, source = workload.passages(tokenizer, count=args.candidates)
    query = workload.QUERY
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="crossrank-peers-onnx-")
    print(f"model: {description}; {len(texts)} candidates from {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {workload.load_line()}")

    runners: dict[str, Runner] = {}
    peers: dict[str, Callable[[], Runner]] = {
        "langchain CrossEncoderReranker": lambda: langchain_peer(path, query, texts),
        "llama-index SentenceTransformerRerank": lambda: llama_index_peer(path, query, texts),
        HAYSTACK_TORCH: lambda: haystack_peer(path, query, texts, backend="torch"),
        HAYSTACK_ONNX: lambda: haystack_peer(path, query, texts, backend="onnx"),
        "rerankers (cross-encoder)": lambda: rerankers_peer(path, query, texts),
    }
    for name, build in peers.items():
        workload.seed_head()
        try:
            runners[name] = build()
            runners[name]()  # fail here, not in the timed loop
        except Exception as exc:
            runners.pop(name, None)
            print(f"  skip {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    workload.seed_head()
    runners["crossrank default"], _ = crossrank_runner(path, query, texts)
    workload.seed_head()
    fastest, label = crossrank_runner(path, query, texts, precision="auto", cache_dir=cache_dir)
    runners[f"crossrank auto ({label})"] = fastest
    for name in args.variants:
        if name == label:
            continue
        workload.seed_head()
        try:
            runners[f"crossrank {name}"], _ = crossrank_runner(
                path, query, texts, cache_dir=cache_dir, **VARIANTS[name]
            )
        except Exception as exc:
            print(f"  skip crossrank {name}: {type(exc).__name__}: {str(exc)[:160]}")

    print(f"timing {len(runners)} rerankers x {args.repeats} interleaved rounds ...", flush=True)
    timings = workload.interleaved_timings(runners, repeats=args.repeats)
    if args.haystack_onnx_python and HAYSTACK_ONNX not in timings and HAYSTACK_TORCH in timings:
        try:
            external = haystack_onnx_in_venv(
                args.haystack_onnx_python, path, query, texts, repeats=args.repeats
            )
        except Exception as exc:
            print(f"  skip haystack ST ranker in its venv: {type(exc).__name__}: {exc}")
        else:
            print(f"  haystack ST ranker timed in its own venv ({external['versions']}):")
            anchor = workload.median(external["timings"]["torch"])
            for configuration, seconds in external["timings"].items():
                if configuration == "torch":
                    continue
                # Carry over through the anchor: this/torch in that venv x torch here.
                ratio = workload.median(seconds) / anchor
                name = f"haystack ST ranker ({configuration}), own venv"
                timings[name] = [t * ratio for t in timings[HAYSTACK_TORCH]]
                print(f"    {configuration}: {ratio:.2f}x the time of its torch backend there")
            for configuration, why in external["skipped"].items():
                print(f"    skip {configuration}: {why}")
    medians = {name: workload.median(seconds) for name, seconds in timings.items()}
    baseline_name = next(iter(medians))
    crossrank_names = [name for name in medians if name.startswith("crossrank")]
    print(f"\n{len(texts)} candidates per call; {workload.load_line()}")
    header = f"{'reranker':42s} {'p50 ms':>8s} {'p95 ms':>8s} {'docs/s':>7s}"
    header += "".join(f" {'x vs ' + name.split(' ')[1][:10]:>16s}" for name in crossrank_names)
    workload.print_header(header)
    for name, seconds in timings.items():
        med = medians[name]
        line = (
            f"{name:42s} {1000 * med:8.0f} {1000 * workload.percentile(seconds, 0.95):8.0f} "
            f"{len(texts) / med:7.1f}"
        )
        for ours in crossrank_names:
            line += f" {med / medians[ours]:16.2f}"
        print(line)
    print(
        f"(ratios are peer time / crossrank time: > 1 means crossrank is faster; "
        f"baseline row: {baseline_name})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
