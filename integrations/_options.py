"""Reranker options shared by the adapters: one way to say which engine an adapter drives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossrank import ConfigurationError, Reranker


def resolve_reranker(
    reranker: Reranker | None,
    reranker_config: Mapping[str, Any] | None,
    reranker_options: dict[str, Any],
) -> Reranker:
    """One reranker from exactly one of: an instance, a saved config, or keyword options."""
    given = [
        name
        for name, present in (
            ("reranker", reranker is not None),
            ("reranker_config", reranker_config is not None),
            ("Reranker options", bool(reranker_options)),
        )
        if present
    ]
    if len(given) > 1:
        raise ConfigurationError(
            f"give only one of reranker=, reranker_config= or Reranker options; got {given} "
            f"(options: {sorted(reranker_options)})"
        )
    if reranker is not None:
        if not isinstance(reranker, Reranker):
            raise ConfigurationError(
                f"reranker must be a crossrank.Reranker, got {type(reranker).__name__}"
            )
        return reranker
    if reranker_config is not None:
        return Reranker.from_config(reranker_config)
    return Reranker(**reranker_options)


def config_of(reranker: Reranker) -> dict[str, Any] | None:
    """The reranker's serializable config, or None when it wraps a backend instance."""
    try:
        return reranker.to_config()
    except ConfigurationError:
        return None
