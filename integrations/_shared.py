"""What the three adapters share, written once: which engine they drive, how a framework's
document becomes a :class:`~crossrank.Candidate`, and what each returned document records.

An adapter never names an engine option. It hands its keywords to :func:`build_reranker`,
which gives them to :class:`~crossrank.RerankerConfig` (the one place options are declared),
and it writes result metadata with :func:`result_metadata`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from crossrank import (
    Candidate,
    ConfigurationError,
    InvalidInputError,
    RankedCandidate,
    Reranker,
    RerankerConfig,
    RerankReport,
    Secret,
)
from crossrank.validation import is_real_number

#: Each framework's own rerankers keep this many documents unless told otherwise.
FRAMEWORK_TOP_N = {"langchain": 3, "llama_index": 2, "haystack": 10}

#: Framework spellings of engine options, accepted as plain aliases (Haystack's rankers say
#: ``top_k`` and ``score_threshold``).
OPTION_ALIASES = {"top_k": "top_n", "score_threshold": "threshold"}

# Keys every adapter writes into a returned document's metadata.
FIRST_STAGE_SCORE = "first_stage_score"
FIRST_STAGE_RANK = "first_stage_rank"
RAW_SCORE = "rerank_raw_score"
STATUS = "rerank_status"
ERROR = "rerank_error"
PARTIAL = "rerank_partial"


def resolve_config(
    framework: str,
    *,
    reranker: Reranker | None,
    config: RerankerConfig | Mapping[str, Any] | None,
    options: dict[str, Any],
) -> tuple[RerankerConfig, Reranker | None]:
    """The config an adapter runs, and the given reranker when it can be reused unchanged.

    Exactly one of a ready reranker, a config (or its dict) or keyword options says what to
    run; options given beside the first two change only those options (a named model is
    still shared through the registry, a backend instance is reused). A reranker that keeps
    every candidate (``top_n=None``) gets the framework's usual ``top_n`` unless the caller
    says ``top_n`` here, ``None`` included.
    """
    options = {OPTION_ALIASES.get(name, name): value for name, value in options.items()}
    if reranker is not None and config is not None:
        raise ConfigurationError("give reranker= or config=, not both")
    if reranker is not None:
        if not isinstance(reranker, Reranker):
            raise ConfigurationError(
                f"reranker must be a crossrank.Reranker, got {type(reranker).__name__}"
            )
        if "backend" in options:
            raise ConfigurationError("give only one of reranker= and backend=")
        base = reranker.config
    elif config is not None:
        base = RerankerConfig.from_dict(config) if isinstance(config, Mapping) else config
        if not isinstance(base, RerankerConfig):
            raise ConfigurationError(
                f"config must be a RerankerConfig or its dict, got {type(config).__name__}"
            )
    else:
        options.setdefault("top_n", FRAMEWORK_TOP_N[framework])
        return RerankerConfig.from_options(**options), None
    if "top_n" not in options and base.top_n is None:
        options["top_n"] = FRAMEWORK_TOP_N[framework]
    if not options:
        return base, reranker
    return base.replace(**options), None


def build_reranker(
    framework: str,
    *,
    reranker: Reranker | None,
    config: RerankerConfig | Mapping[str, Any] | None,
    options: dict[str, Any],
) -> Reranker:
    """The engine an adapter drives (see :func:`resolve_config` for what it accepts)."""
    resolved, ready = resolve_config(framework, reranker=reranker, config=config, options=options)
    return ready if ready is not None else Reranker(config=resolved)


def saved_config(reranker: Reranker) -> dict[str, Any] | None:
    """The reranker's credential-free dict, or ``None`` when it wraps a backend instance."""
    return reranker.config.to_dict() if reranker.config.serializable else None


def token_secrets(config: RerankerConfig) -> list[str]:
    """Options holding literal keys: frameworks that refuse to save those (Haystack) ask."""
    return sorted(
        name
        for name, value in config.backend_options.items()
        if isinstance(value, Secret) and value.is_token
    )


def documents_of(documents: Any, document_type: type, framework: str) -> Sequence[Any]:
    """``documents`` if it is a sequence of ``document_type``; else an error naming the culprit."""
    if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Sequence):
        raise InvalidInputError(
            f"documents must be a sequence of {framework} {document_type.__name__}, got "
            f"{type(documents).__name__}"
        )
    for position, document in enumerate(documents):
        if not isinstance(document, document_type):
            raise InvalidInputError(
                f"document {position} must be a {framework} {document_type.__name__}, got "
                f"{type(document).__name__}"
            )
    return documents


def candidate(
    text: str, *, id: str | None, score: Any, metadata: Mapping[str, Any], position: int
) -> Candidate:
    """A candidate from a framework document; a score that is no finite number is refused."""
    if score is not None and not (is_real_number(score) and math.isfinite(score)):
        raise InvalidInputError(
            f"document {position} (id={id!r}) has an unusable score {score!r}; expected a "
            "finite number or None"
        )
    return Candidate(text=text, id=id, first_stage_score=score, metadata=metadata)


def first_finite_number(metadata: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    """The first of ``keys`` in ``metadata`` holding a finite number (strings never count)."""
    for key in keys:
        value: Any = metadata.get(key)
        if is_real_number(value) and math.isfinite(value):
            return float(value)
    return None


def result_metadata(item: RankedCandidate, report: RerankReport) -> dict[str, Any]:
    """What one returned document records of how it got where it is."""
    metadata: dict[str, Any] = {
        FIRST_STAGE_RANK: item.first_stage_rank,
        RAW_SCORE: item.raw_score,
        STATUS: report.status,
    }
    if item.candidate.first_stage_score is not None:
        metadata[FIRST_STAGE_SCORE] = item.candidate.first_stage_score
    if report.error is not None:
        metadata[ERROR] = report.error
    if report.partial:  # the latency budget reranked a head only; this may lie below it
        metadata[PARTIAL] = True
    return metadata
