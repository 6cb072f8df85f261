"""``crossrank serve`` and ``crossrank batch``: the engine as a shared service and at scale.

The HTTP app speaks Cohere's v2 rerank format and Text Embeddings Inference's, so clients
built for those services work unchanged; Ray (optional) runs the same app as a Serve
deployment and the batch job over Ray Data. FastAPI, uvicorn and Ray are imported only by
the modules that need them, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

from crossrank.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from crossrank.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'crossrank.serve' has no attribute {name!r}")
