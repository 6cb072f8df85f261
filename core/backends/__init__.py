"""Scoring backends, chosen by instance or by a short name.

Each backend lives in its own module and imports its heavy dependencies only when
constructed, so ``import crossrank`` stays free of torch, HTTP clients and SDKs.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from crossrank.backends.base import Backend, BaseBackend, TokenWindowing
from crossrank.errors import ConfigurationError

#: short name -> "module:ClassName"; aliases point at the same class.
BACKENDS: dict[str, str] = {
    "cross-encoder": "crossrank.backends.local:CrossEncoderBackend",
    "local": "crossrank.backends.local:CrossEncoderBackend",
    "embedding": "crossrank.backends.embedding:EmbeddingBackend",
    "cohere": "crossrank.backends.cohere:CohereBackend",
    "jina": "crossrank.backends.jina:JinaBackend",
    "tei": "crossrank.backends.providers:TeiBackend",
    "cohere-compatible": "crossrank.backends.providers:CohereCompatibleBackend",
    "voyage": "crossrank.backends.providers:VoyageBackend",
    "mixedbread": "crossrank.backends.providers:MixedbreadBackend",
    "late-interaction": "crossrank.backends.late_interaction:LateInteractionBackend",
    "llm": "crossrank.backends.llm:LlmBackend",
    "onnx-lite": "crossrank.backends.onnx_lite:OnnxLiteBackend",
}


def backend_class(name: str) -> type[Any]:
    """The class behind a short backend name or an import path ``"package.module:Class"``."""
    if not isinstance(name, str):
        raise ConfigurationError(f"a backend name must be a string, got {name!r}")
    target = name.strip() if ":" in name else BACKENDS.get(name.strip().lower())
    if target is None:
        raise ConfigurationError(
            f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}, an import path "
            "'package.module:Class', or a Backend instance"
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        if isinstance(exc, ImportError) and module_name.startswith("crossrank."):
            raise  # a missing optional dependency names its extra; let it say so
        raise ConfigurationError(f"cannot import backend {target!r}: {exc}") from exc
    if not isinstance(cls, type):
        raise ConfigurationError(f"backend {target!r} is not a class")
    return cls


def create_backend(name: str, **options: Any) -> Backend:
    """Build a backend by short name; options are the backend's keyword arguments."""
    cls = backend_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {unknown} for backend {name!r}; accepted: "
                f"{sorted(p for p in accepted if p != 'self')}"
            )
    return cls(**options)  # type: ignore[no-any-return]


__all__ = [
    "BACKENDS",
    "Backend",
    "BaseBackend",
    "TokenWindowing",
    "backend_class",
    "create_backend",
]
