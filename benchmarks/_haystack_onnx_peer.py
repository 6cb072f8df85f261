"""Time Haystack's ``SentenceTransformersSimilarityRanker`` with its ONNX backend, in its own venv.

Haystack's ONNX backend goes through sentence-transformers' ``backend="onnx"``, which needs
``optimum-onnx``; that package pins ``transformers<4.58``, which cannot share a venv with
crossrank's ``transformers>=5``. So ``peers.py`` runs this script with a second venv's Python
(``--haystack-onnx-python``) and bridges the two processes through an anchor measured in
both: the same ranker on its torch backend. The ONNX time reported in ``peers.py`` is this
script's ONNX/torch ratio times the torch time measured there, so machine-load differences
between the two processes cancel out.

Reads a JSON request on stdin: ``{"model": PATH, "query": ..., "texts": [...], "repeats": N}``;
writes ``{"onnx": [seconds...], "torch": [seconds...], "versions": {...}}`` on stdout.
Standalone on purpose: it must not import crossrank, which is not installed there.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


def ranker(model: str, backend: str, top_k: int) -> Any:
    try:  # the ST components moved out of haystack-ai into an integration package
        from haystack_integrations.components.rankers.sentence_transformers import (
            SentenceTransformersSimilarityRanker,
        )
    except ImportError:
        from haystack.components.rankers import SentenceTransformersSimilarityRanker

    component = SentenceTransformersSimilarityRanker(model=model, top_k=top_k, backend=backend)
    component.warm_up()
    return component


def onnx_model_dir(model: str) -> str:
    """A copy of the model folder with an ONNX export, written once (ST's own export path).

    sentence-transformers exports on first load when the folder has no ``onnx/model.onnx``;
    doing it into a scratch copy keeps the shared model folder untouched.
    """
    import shutil

    from sentence_transformers import CrossEncoder

    scratch = os.path.join(tempfile.mkdtemp(prefix="haystack-onnx-peer-"), "model")
    shutil.copytree(model, scratch)
    exported = CrossEncoder(scratch, backend="onnx", device="cpu")
    exported.save_pretrained(scratch)
    return scratch


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    request = json.load(sys.stdin)
    from haystack import Document

    texts: list[str] = request["texts"]
    documents = [Document(content=text) for text in texts]
    runners = {
        "torch": ranker(request["model"], "torch", len(texts)),
        "onnx": ranker(onnx_model_dir(request["model"]), "onnx", len(texts)),
    }
    for component in runners.values():  # warm-up
        component.run(query=request["query"], documents=documents)
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(int(request.get("repeats", 5))):
        for name, component in runners.items():
            started = time.perf_counter()
            component.run(query=request["query"], documents=documents)
            timings[name].append(time.perf_counter() - started)
    import haystack
    import sentence_transformers
    import transformers

    versions = {
        "haystack": haystack.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
    }
    json.dump({**timings, "versions": versions}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
