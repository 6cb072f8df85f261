"""Real servers on 127.0.0.1 for the serving tests, each in a thread of the test process."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from crossrank import Reranker
from crossrank.serve.settings import ServeSettings

_SERVE_EXTRA = ("fastapi", "uvicorn", "prometheus_client", "httpx")
if any(importlib.util.find_spec(name) is None for name in _SERVE_EXTRA):
    # Without the `serve` extra there is nothing here to test (dev installs it).
    collect_ignore_glob = ["test_*.py"]

QUERY = "what is the capital of france"
DOCUMENTS = [
    "berlin is the capital of germany",
    "paris is the capital of france and sits on the seine",
    "refunds for physical goods are issued within fourteen days",
    "the capital of france is paris",
    "shipping to europe takes five to seven business days",
]


@contextmanager
def serving(
    reranker: Reranker, settings: ServeSettings | None = None, *, warm_up: bool = True
) -> Iterator[Any]:
    """A started server; waits for /ready when ``warm_up``."""
    from crossrank.serve.app import create_app
    from crossrank.serve.server import BackgroundServer, wait_ready

    settings = settings or ServeSettings()
    server = BackgroundServer(create_app(reranker, settings, warm_up=warm_up), settings)
    server.start()
    try:
        if warm_up:
            headers = None
            if settings.api_keys:
                headers = {"Authorization": f"Bearer {settings.api_keys[0].resolve_value()}"}
            wait_ready(server.url, timeout_s=120, headers=headers)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_config(tiny_cross_encoder_path: Path) -> dict[str, Any]:
    """An engine config over the tiny cross-encoder built on disk (no hub)."""
    return {"backend": "cross-encoder", "backend_options": {"model": str(tiny_cross_encoder_path)}}


@pytest.fixture(scope="session")
def tiny_config_file(tiny_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-config") / "reranker.json"
    path.write_text(json.dumps(tiny_config), encoding="utf-8")
    return path
