"""Loading a cross-encoder's weights or tokenizer; every failure becomes a ``ModelLoadError``.

sentence-transformers loads the model (any hub id or local path, safetensors preferred,
``trust_remote_code`` off unless asked); ONNX variants need only the fast tokenizer, so they
never hold torch weights in memory.
"""

from __future__ import annotations

from typing import Any

from crossrank.backends._torch import import_torch, resolve_dtype
from crossrank.backends.local.options import ModelSource
from crossrank.errors import ModelLoadError, missing_dependency

#: torch dtype name of each float precision.
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_cross_encoder(source: ModelSource, *, device: str, dtype: str | None) -> Any:
    """A ``CrossEncoder`` in eval mode, cast to ``dtype`` (``None``: as stored, fp32)."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise missing_dependency("sentence-transformers", "local") from exc
    import_torch()
    try:
        cross_encoder = CrossEncoder(
            source.model,
            device=device,
            max_length=source.max_length,
            revision=source.revision,
            trust_remote_code=source.trust_remote_code,
            local_files_only=source.local_files_only,
            model_kwargs={"torch_dtype": resolve_dtype(dtype)} if dtype else None,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load cross-encoder {source.model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    cross_encoder.eval()
    if dtype and dtype != "float32":
        cross_encoder.to(resolve_dtype(dtype))
    return cross_encoder


def load_tokenizer(source: ModelSource) -> Any:
    """The model's fast tokenizer alone."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise missing_dependency("transformers", "local") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.model,
            revision=source.revision,
            trust_remote_code=source.trust_remote_code,
            local_files_only=source.local_files_only,
            use_fast=True,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load cross-encoder {source.model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if source.max_length is not None:
        tokenizer.model_max_length = source.max_length
    return tokenizer


def network(cross_encoder: Any) -> Any:
    """The transformers model inside a ``CrossEncoder`` (its attribute moved across versions)."""
    return getattr(cross_encoder, "transformers_model", None) or cross_encoder.model


def input_limit(tokenizer: Any, max_length: int | None) -> int:
    """Tokens per pair the model takes: ``max_length`` if set, else the tokenizer's limit
    (512 when the tokenizer reports its "no limit" sentinel)."""
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit <= 100_000 else 512
