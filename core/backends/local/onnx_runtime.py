"""ONNX Runtime sessions for cached cross-encoder artifacts, one per artifact and thread count.

Sessions live in the model registry next to the torch models, so however many rerankers
and adapters use an ONNX variant, the process holds one copy of its weights. A session is
thread-safe for ``run`` (ONNX Runtime guarantees it), so sharing needs no extra lock.
"""

from __future__ import annotations

import numpy as np

from crossrank.backends.local.onnx_export import OnnxArtifact
from crossrank.errors import ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry


class OnnxCrossEncoderSession:
    """Runs padded (ids, mask, types) batches through an ONNX cross-encoder; returns logits."""

    def __init__(self, artifact: OnnxArtifact, *, num_threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "onnx") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        # One request's batches run one after another; parallelism lives inside each op.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(
                str(artifact.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not open ONNX model {artifact.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.artifact = artifact
        self.input_names = {node.name for node in self._session.get_inputs()}

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = (
                token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
            )
        (logits,) = self._session.run(["logits"], feeds)
        return np.asarray(logits, dtype=np.float32)


def load_session(
    registry: ModelRegistry, artifact: OnnxArtifact, *, num_threads: int | None
) -> OnnxCrossEncoderSession:
    """The shared session for ``artifact``; keyed by its bytes' digest so a rebuilt file reloads."""
    key = ("onnx-session", artifact.sha256, num_threads)
    return registry.get_or_load(
        key, lambda: OnnxCrossEncoderSession(artifact, num_threads=num_threads)
    )
