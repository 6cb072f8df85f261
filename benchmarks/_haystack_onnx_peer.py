"""Time Haystack's ``SentenceTransformersSimilarityRanker`` on its fast backends, in its own venv.

Haystack's ONNX and OpenVINO backends go through sentence-transformers' ``backend=``, which
needs ``optimum-onnx`` / ``optimum-intel``; those pin ``transformers<4.58``, which cannot share
a venv with crossrank's ``transformers>=5``. So ``peers.py`` runs this script with a second
venv's Python (``--haystack-onnx-python``) and bridges the two processes through an anchor
measured in both: the same ranker on its torch backend. A configuration's time reported in
``peers.py`` is this script's configuration/torch ratio times the torch time measured there,
so machine-load differences between the two processes cancel out.

The configurations are the peer's best on a CPU, as its documentation gives them: the ONNX
export, the ONNX export quantized to int8 for this CPU's instructions
(``export_dynamic_quantized_onnx_model`` with ``avx512_vnni`` or ``avx2``), and OpenVINO.

Reads a JSON request on stdin: ``{"model": PATH, "query": ..., "texts": [...], "repeats": N}``;
writes ``{"timings": {configuration: [seconds...]}, "skipped": {configuration: why},
"versions": {...}}`` on stdout. Standalone on purpose: it must not import crossrank, which
is not installed there.
"""

from __future__ import annotations

import functools
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


def ranker(model: str, backend: str, top_k: int, file_name: str | None = None) -> Any:
    try:  # the ST components moved out of haystack-ai into an integration package
        from haystack_integrations.components.rankers.sentence_transformers import (
            SentenceTransformersSimilarityRanker,
        )
    except ImportError:
        from haystack.components.rankers import SentenceTransformersSimilarityRanker

    model_kwargs = {"file_name": file_name} if file_name else None
    component = SentenceTransformersSimilarityRanker(
        model=model, top_k=top_k, backend=backend, model_kwargs=model_kwargs
    )
    component.warm_up()
    return component


@functools.cache  # the fp32 and int8 configurations share one export
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


def quantized_onnx_file(folder: str) -> str:
    """ST's dynamic int8 export for this CPU's best instruction set; the file name to load."""
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        config = "avx512_vnni" if "avx512_vnni" in handle.read() else "avx2"
    model = CrossEncoder(folder, backend="onnx", device="cpu")
    export_dynamic_quantized_onnx_model(model, config, folder)
    return f"onnx/model_qint8_{config}.onnx"


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    request = json.load(sys.stdin)
    from haystack import Document

    texts: list[str] = request["texts"]
    model = request["model"]
    documents = [Document(content=text) for text in texts]
    builders = {
        "torch": lambda: ranker(model, "torch", len(texts)),
        "onnx": lambda: ranker(onnx_model_dir(model), "onnx", len(texts)),
        "onnx int8": lambda: ranker(
            onnx_model_dir(model), "onnx", len(texts), quantized_onnx_file(onnx_model_dir(model))
        ),
        "openvino": lambda: ranker(model, "openvino", len(texts)),
    }
    runners: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        try:
            runners[name] = build()
            runners[name].run(query=request["query"], documents=documents)  # warm-up
        except Exception as exc:  # a configuration this venv cannot run: say why
            runners.pop(name, None)
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
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
    json.dump({"timings": timings, "skipped": skipped, "versions": versions}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
