"""The engine configuration of ``serve`` and ``batch``: a saved config file, options, or both.

A file written by ``crossrank tune-selective`` (or ``Reranker.to_config()``) is the usual
source; command-line options override single fields of it. The result is a plain mapping,
which is what travels to Ray replicas and actors: each builds its own ``Reranker`` (and so its
own model copy) from it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossrank.config import RerankerConfig
from crossrank.engine import Reranker
from crossrank.errors import ConfigurationError


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--backend``, ``--model`` and a repeatable ``--option KEY=VALUE``.

    Options are not re-declared here: ``--option`` takes any engine option
    (``top_n=5``, ``selective=margin:0.3``, ``latency_budget_ms=200``) or backend option
    (``micro_batch=true``, ``num_threads=1``), sorted the way ``Reranker(**options)`` sorts them.
    """
    group = parser.add_argument_group("engine (a config file, options, or both)")
    group.add_argument("--config", default=None, help="reranker config JSON (tune-selective --out)")
    group.add_argument("--backend", default=None, help="backend name, e.g. cross-encoder, cohere")
    group.add_argument("--model", default=None, help="model id or local path for the backend")
    group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any engine or backend option (VALUE read as JSON when it parses, else as a "
        "string), e.g. top_n=5, micro_batch=true; repeatable",
    )


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def engine_config(args: argparse.Namespace) -> dict[str, Any]:
    """The reranker config the arguments describe (file first, options on top)."""
    config: dict[str, Any] = {}
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigurationError(f"config file {str(path)!r} does not exist")
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"config file {str(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigurationError(f"config file {str(path)!r} must hold a JSON object")
        config.update(loaded)
    backend_options = dict(config.get("backend_options") or {})
    engine_options = set(RerankerConfig.engine_options())
    if args.backend is not None:
        config["backend"] = args.backend
    if args.model is not None:
        backend_options["model"] = args.model
    for item in args.option:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ConfigurationError(f"--option expects KEY=VALUE, got {item!r}")
        name = key.strip()
        (config if name in engine_options else backend_options)[name] = _option_value(value)
    config["backend_options"] = backend_options
    return config


def build_reranker(config: Mapping[str, Any]) -> Reranker:
    """A reranker from a config mapping (the same call on every Ray replica and actor)."""
    return Reranker.from_config(config)
