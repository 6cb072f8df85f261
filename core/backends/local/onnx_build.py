"""Build one ONNX artifact's bytes: trace the model to fused fp32 ONNX, or quantize one to int8.

:mod:`crossrank.backends.local.onnx_export` decides when to build and where the result lives;
this module only writes a file. Tracing imports torch and sentence-transformers, quantizing
imports ONNX Runtime's quantization tools, and neither runs in a process that loads a
ready artifact.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from crossrank.errors import ModelLoadError, missing_dependency

logger = logging.getLogger(__name__)


def export_fp32(
    model: str,
    target: Path,
    *,
    opset: int,
    revision: str | None,
    max_length: int | None,
    trust_remote_code: bool,
    local_files_only: bool,
) -> None:
    """Trace the model with eager attention (so ORT can fuse it) and write fused fp32 ONNX."""
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise missing_dependency("sentence-transformers", "local") from exc
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as exc:
        raise missing_dependency("onnx", "onnx") from exc
    try:
        cross_encoder = CrossEncoder(
            model,
            device="cpu",
            max_length=max_length,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            model_kwargs={"attn_implementation": "eager", "torch_dtype": torch.float32},
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load cross-encoder {model!r} for ONNX export: {type(exc).__name__}: {exc}"
        ) from exc
    network: Any = getattr(cross_encoder, "transformers_model", None) or cross_encoder.model
    network.eval()
    sample = cross_encoder.tokenizer(
        ["a short query", "another query"],
        ["a passage to trace the graph with", "a second, somewhat longer passage of text"],
        padding=True,
        return_tensors="pt",
    )
    input_names = [
        name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample
    ]

    class _LogitsOnly(torch.nn.Module):  # type: ignore[misc]
        """Positional inputs in, logits out: the shape the tracer and ORT want."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(input_names, tensors, strict=True))).logits

    dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic["logits"] = {0: "batch"}
    raw = target.with_name("raw.onnx")
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(network),
            tuple(sample[name] for name in input_names),
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    _fuse_transformer(raw, target, config=network.config)
    raw.unlink(missing_ok=True)


def _fuse_transformer(raw: Path, target: Path, *, config: Any) -> None:
    """Fuse attention/LayerNorm/GELU with ORT's transformer optimizer when it knows the model.

    Fusion is what makes ONNX fp32 faster than torch on CPU; a model type the optimizer does
    not recognize keeps the plain graph (ORT still applies its generic optimizations).
    """
    model_type = getattr(config, "model_type", "")
    fusable = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert"}
    if model_type not in fusable:
        shutil.copyfile(raw, target)
        return
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        raise missing_dependency("onnxruntime", "onnx") from exc
    try:
        optimized = optimizer.optimize_model(
            str(raw),
            model_type=fusable[model_type],
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=1,
            use_gpu=False,
        )
        optimized.save_model_to_file(str(target))
    except Exception as exc:  # fusion is an optimization, never a reason to fail
        logger.warning("ONNX transformer fusion failed (%s); using the plain export", exc)
        shutil.copyfile(raw, target)


def quantize(source: Path, target: Path, *, quantization: str | None) -> None:
    """Dynamic int8: weights per output channel, activations scaled per batch at run time."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise missing_dependency("onnxruntime", "onnx") from exc
    if quantization not in ("dynamic", "dynamic-mixed"):
        raise ValueError(f"unknown quantization {quantization!r}")
    excluded: list[str] = []
    if quantization == "dynamic-mixed":
        graph = onnx.load(str(source), load_external_data=False).graph
        excluded = [node.name for node in graph.node if _is_ffn_down_projection(node)]
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # mixed: linear layers only, so the fused attention (QKV, softmax) stays fp32
        op_types_to_quantize=["MatMul"] if quantization == "dynamic-mixed" else None,
        nodes_to_exclude=excluded,
        extra_options={"DefaultTensorType": 1},  # fused ops hide types from shape inference
    )


def _is_ffn_down_projection(node: Any) -> bool:
    """The feed-forward block's second linear layer (BERT names it ``layer.N/output/dense``)."""
    name = node.name
    return node.op_type == "MatMul" and "/output/dense" in name and "/attention/" not in name
