"""Loading one variant (torch fp32 / bf16 / fp16, torch int8, ONNX fp32 / int8, OpenVINO) as a
runner.

Each variant comes back as a :class:`LoadedVariant`: the shared model object, a runner that
turns padded token arrays into logits, and the tokenizer. Models live in the registry, keyed
by everything that changes them, so every backend and adapter in a process shares one copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossrank.backends._torch import import_torch
from crossrank.backends.local.loading import (
    PRECISION_DTYPES,
    input_limit,
    load_cross_encoder,
    load_tokenizer,
    network,
)
from crossrank.backends.local.options import Execution, ModelSource
from crossrank.backends.local.scoring import Runner, encode_pairs, pad, torch_features
from crossrank.backends.local.variants import TORCH_INT8, Variant
from crossrank.errors import ConfigurationError
from crossrank.registry import ModelRegistry

_torch_threads_lock = threading.Lock()
#: Pairs NNCF calibrates OpenVINO int8 on (spread over the fidelity sample).
_OPENVINO_CALIBRATION_PAIRS = 384


@dataclass(frozen=True)
class LoadedVariant:
    """A variant ready to score: ``model`` is what ``backend.load()`` returns."""

    model: Any
    runner: Runner
    tokenizer: Any
    #: True when compiling was asked for, failed, and the variant runs eager.
    compile_fell_back: bool = False


def load_variant(
    variant: Variant,
    *,
    source: ModelSource,
    execution: Execution,
    device: str,
    registry: ModelRegistry,
    int8_sample: Callable[[], tuple[list[tuple[str, Sequence[str]]], str]],
) -> LoadedVariant:
    """Load ``variant`` through ``registry``; ``int8_sample`` gives torch int8's smoothing
    sample and its digest (only called for that variant)."""
    if variant == TORCH_INT8:
        sample, digest = int8_sample()
        cross_encoder, forward = registry.get_or_load(
            (*source.torch_key(device, "int8-token"), execution.compile, digest),
            lambda: _load_token_int8(source, execution, device, sample, digest),
        )
        _apply_torch_threads(execution)
        return LoadedVariant(
            cross_encoder,
            torch_runner(cross_encoder, forward),
            cross_encoder.tokenizer,
            compile_fell_back=execution.compile and not forward.compiled,
        )
    if variant.runtime == "torch":
        dtype = PRECISION_DTYPES[variant.precision]
        cross_encoder = registry.get_or_load(
            source.torch_key(device, dtype),
            lambda: load_cross_encoder(
                source, device=device, dtype=None if dtype == "float32" else dtype
            ),
        )
        _apply_torch_threads(execution)
        return LoadedVariant(cross_encoder, torch_runner(cross_encoder), cross_encoder.tokenizer)
    from crossrank.backends.local.onnx_export import ensure_artifact
    from crossrank.backends.local.onnx_runtime import load_session

    if variant.runtime == "openvino":
        from crossrank.backends.local.openvino_runtime import require_openvino

        require_openvino()  # a missing package is named before a minute-long export
    artifact = ensure_artifact(
        source.model,
        # OpenVINO converts (and NNCF quantizes) the fp32 export itself.
        quantization=None if variant.runtime == "openvino" else variant.quantization,
        cache_dir=execution.cache_dir,
        revision=source.revision,
        opset=execution.opset,
        max_length=source.max_length,
        trust_remote_code=source.trust_remote_code,
        local_files_only=source.local_files_only,
    )
    tokenizer = registry.get_or_load(
        ("cross-encoder-tokenizer", source.model, source.revision, source.max_length),
        lambda: load_tokenizer(source),
    )
    if variant.runtime == "openvino":
        compiled = _load_openvino(variant, artifact, source, execution, registry, tokenizer,
                                  int8_sample)  # fmt: skip
        return LoadedVariant(compiled, compiled, tokenizer)
    session = load_session(registry, artifact, num_threads=execution.num_threads)
    return LoadedVariant(session, session, tokenizer)


def _load_openvino(
    variant: Variant,
    artifact: Any,
    source: ModelSource,
    execution: Execution,
    registry: ModelRegistry,
    tokenizer: Any,
    int8_sample: Callable[[], tuple[list[tuple[str, Sequence[str]]], str]],
) -> Any:
    """The OpenVINO model converted from the fp32 ONNX ``artifact``; int8 is calibrated on
    the same sample torch int8 smooths with (the fidelity sample), 16 pairs per batch."""
    from crossrank.backends.local.openvino_runtime import load_openvino

    digest: str | None = None
    calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None
    if variant.precision == "int8":
        sample, digest = int8_sample()

        def batches() -> list[dict[str, np.ndarray]]:
            pairs = [(query, text) for query, texts in sample for text in texts]
            # Every query's pairs, thinned to at most about 384: NNCF's cost grows with them.
            pairs = pairs[:: max(1, len(pairs) // _OPENVINO_CALIBRATION_PAIRS)]
            encoded = encode_pairs(
                tokenizer, [q for q, _ in pairs], [t for _, t in pairs],
                max_length=input_limit(tokenizer, source.max_length),
            )  # fmt: skip
            out = []
            for first in range(0, len(pairs), 16):
                chunk = np.arange(first, min(first + 16, len(pairs)))
                ids, mask, types = pad(encoded, chunk, tokenizer.pad_token_id or 0)
                batch = {"input_ids": ids, "attention_mask": mask}
                batch["token_type_ids"] = types if types is not None else np.zeros_like(ids)
                out.append(batch)
            return out

        calibration = batches
    return load_openvino(
        registry,
        artifact,
        precision=variant.precision,
        cache_dir=execution.cache_dir,
        num_threads=execution.num_threads,
        calibration=calibration,
        calibration_digest=digest,
    )


def torch_runner(cross_encoder: Any, forward: Callable[..., Any] | None = None) -> Runner:
    """Runs batches through the network, or through ``forward`` (a compiled wrapper of it)."""
    torch = import_torch()
    model = network(cross_encoder)
    call = forward or model
    device = next(model.parameters()).device

    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            logits = call(**torch_features(torch, ids, mask, types, device)).logits
        return logits.float().cpu().numpy()  # type: ignore[no-any-return]

    return run


def _apply_torch_threads(execution: Execution) -> None:
    if execution.num_threads is not None:
        torch = import_torch()
        with _torch_threads_lock:
            torch.set_num_threads(execution.num_threads)


def _load_token_int8(
    source: ModelSource,
    execution: Execution,
    device: str,
    sample: list[tuple[str, Sequence[str]]],
    sample_digest: str,
) -> tuple[Any, Any]:
    """A private fp32 copy of the model, its encoder quantized in place, then compiled.

    The copy is private because quantizing rewrites its layers; the fp32 weights it
    replaces are freed, so its weights take about a quarter of an fp32 copy (the compiler's
    own state adds a few hundred MB: 460 MB of RSS for MiniLM in the benchmark). Smoothing
    factors come from activation ranges on the fidelity sample (the bundled demo by
    default): outlier channels belong to the model, not to the text, so a generic sample
    finds them. The ranges are saved (:mod:`~crossrank.backends.local.int8_ranges`), so a
    later process skips that pass. Warm-up runs here, so compiling is paid at load, not by
    a request; inductor caches the kernels on disk (``TORCHINDUCTOR_CACHE_DIR``), so the next
    process on this machine, e.g. a server after ``crossrank optimize``, compiles from cache.
    """
    from crossrank.backends.local.int8_ranges import cached_ranges
    from crossrank.backends.local.token_int8 import (
        CompiledForward,
        activation_ranges,
        quantize_encoder,
    )

    torch = import_torch()
    cross_encoder = load_cross_encoder(source, device=device, dtype=None)
    model = network(cross_encoder)
    tokenizer = cross_encoder.tokenizer
    encoded = encode_pairs(
        tokenizer,
        [query for query, texts in sample for _ in texts],
        [text for _, texts in sample for text in texts],
        max_length=input_limit(tokenizer, source.max_length),
    )
    batches = []
    start = 0
    for _, texts in sample:  # each query's texts in order, 16 pairs per pass
        for first in range(start, start + len(texts), 16):
            chunk = np.arange(first, min(first + 16, start + len(texts)))
            batches.append(torch_features(torch, *pad(encoded, chunk, tokenizer.pad_token_id or 0)))
        start += len(texts)
    ranges = cached_ranges(
        source, execution, sample_digest, lambda: activation_ranges(model, batches)
    )
    if not quantize_encoder(model, ranges):
        # Serving it would be fp32 under an int8 label (and pass any fidelity gate).
        raise ConfigurationError(
            f"precision='int8' with runtime='torch' found no linear layers under an "
            f"'encoder' module in {source.model!r}; use runtime='onnx' for this architecture"
        )
    forward = CompiledForward(model, enabled=execution.compile)
    with torch.inference_mode():
        for features in batches[:2]:  # two shapes, so dynamic shapes compile up front
            forward(**features)
    return cross_encoder, forward
