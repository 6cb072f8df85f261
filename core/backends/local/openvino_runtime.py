"""OpenVINO variants of the local cross-encoder: fp32, bf16 and NNCF int8, from the ONNX export.

OpenVINO reads the ONNX file the backend already builds (ONNX Runtime's fused contrib ops
included), so there is no second exporter: the fp32 ONNX artifact is converted once to
OpenVINO's own format (``model.xml`` + ``model.bin``, weights kept fp32) and cached next to
the ONNX artifacts, under ``<cache>/openvino``. bf16 is the same file compiled with a bf16
inference precision, so it only exists where the CPU computes bf16 natively. int8 is that
file quantized after training by NNCF with its transformer recipe (SmoothQuant on the
matmuls, softmax and LayerNorm kept in float), calibrated on the fidelity sample, with each
feed-forward block's down-projection left in float (:data:`FLOAT_LAYERS`); the sample's
digest enters the cache key, so another sample builds another file.

Compiling for the CPU takes seconds, so the compiled blob is cached too (OpenVINO's
``CACHE_DIR``, ``<cache>/openvino/compiled``): a second process, or a server after
``crossrank optimize``, imports it instead of compiling. OpenVINO and NNCF are imported only
here, and only when an OpenVINO variant is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.backends.local.artifact_cache import cached_build, file_sha256
from crossrank.backends.local.onnx_export import OnnxArtifact, cache_root
from crossrank.errors import ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry

#: Bump when the conversion or quantization recipe changes, so old files are not reused.
IR_FORMAT_VERSION = 2
_XML, _BIN, _MANIFEST = "model.xml", "model.bin", "manifest.json"

#: Layers NNCF leaves in float: each feed-forward block's down-projection, whose input (after
#: GELU) has the outlier channels that make static int8 scales coarse. On the trained MiniLM
#: cross-encoder (the bundled demo sample, 2-core AVX-512 VNNI CPU) this lifted the worst
#: query's Kendall tau against fp32 from 0.924 to 0.955 and top-10 overlap from 0.8 to 0.9,
#: passing the fidelity gate, for about 15% of int8's speed. Names are the ONNX export's
#: (``/.../encoder/layer.N/output/dense/MatMul``); a model named otherwise is quantized whole.
FLOAT_LAYERS = (r".*/encoder/layer\.\d+/output/dense/.*",)

#: Calibration inputs for NNCF: one dict of input arrays per batch.
Calibration = Callable[[], list[dict[str, np.ndarray]]]


def openvino_available() -> bool:
    """Whether OpenVINO is installed, without importing it (auto lists its variants then)."""
    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> Any:
    """The ``openvino`` module, or an error naming the extra (before any slow export)."""
    try:
        import openvino
    except ImportError as exc:
        raise missing_dependency("openvino", "openvino") from exc
    return openvino


@dataclass(frozen=True)
class OpenVinoArtifact:
    """A converted model on disk; ``sha256`` is its weights file's digest."""

    path: Path
    sha256: str
    key: str


def ir_key(onnx: OnnxArtifact, *, quantized: bool, calibration_digest: str | None) -> str:
    """Directory name: the ONNX artifact it came from plus a hash of the recipe and versions."""
    versions = {"format": IR_FORMAT_VERSION, "openvino": require_openvino().__version__}
    if quantized:  # from metadata: a server loading a cached file need not import NNCF
        from importlib.metadata import version

        versions["nncf"] = version("nncf")
    recipe = json.dumps(
        {"onnx": onnx.sha256, "int8": quantized, "sample": calibration_digest, **versions},
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return f"{onnx.key}-ov-{'int8' if quantized else 'fp32'}-{digest}"


def _verified(directory: Path, key: str) -> OpenVinoArtifact | None:
    try:
        expected = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))["sha256"]
        actual = file_sha256(directory / _BIN)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if actual != expected or not (directory / _XML).is_file():
        return None
    return OpenVinoArtifact(directory / _XML, actual, key)


def ensure_ir(
    onnx: OnnxArtifact,
    *,
    quantized: bool,
    cache_dir: str | Path | None,
    calibration: Calibration | None = None,
    calibration_digest: str | None = None,
) -> OpenVinoArtifact:
    """The cached OpenVINO model for ``onnx`` (int8 when ``quantized``), built once under a
    lock and published atomically, as the ONNX artifacts are."""
    ov = require_openvino()
    if quantized:
        try:
            import nncf
        except ImportError as exc:
            raise missing_dependency("nncf", "openvino") from exc
        if calibration is None:
            raise ValueError("int8 needs calibration batches")
    root = cache_root(cache_dir) / "openvino"
    root.mkdir(parents=True, exist_ok=True)
    key = ir_key(onnx, quantized=quantized, calibration_digest=calibration_digest)

    def build(staging: Path) -> None:
        try:
            model = ov.Core().read_model(str(onnx.path))
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not read {onnx.path}: {type(exc).__name__}: {exc}"
            ) from exc
        if quantized:
            assert calibration is not None
            names = {port.get_any_name() for port in model.inputs}
            batches = [
                {name: array for name, array in batch.items() if name in names}
                for batch in calibration()
            ]
            try:
                model = nncf.quantize(
                    model,
                    nncf.Dataset(batches),
                    model_type=nncf.ModelType.TRANSFORMER,
                    subset_size=len(batches),
                    ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_LAYERS), validate=False),
                )
            except Exception as exc:  # auto then drops the candidate instead of failing
                raise ModelLoadError(
                    f"NNCF could not quantize {onnx.path}: {type(exc).__name__}: {exc}"
                ) from exc
        # save_model halves weights to fp16 by default; fp32 must stay fp32.
        ov.save_model(model, str(staging / _XML), compress_to_fp16=False)
        manifest = {"sha256": file_sha256(staging / _BIN), "onnx": onnx.key, "int8": quantized}
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=1), "utf-8")

    artifact, _ = cached_build(
        root, key, verified=lambda directory: _verified(directory, key), build=build
    )
    return artifact


class OpenVinoCrossEncoder:
    """Runs padded (ids, mask, types) batches through a compiled OpenVINO model; returns logits.

    A compiled model is shared, but an infer request is not thread-safe, so each thread gets
    its own request (created on its first batch).
    """

    def __init__(
        self,
        artifact: OpenVinoArtifact,
        *,
        precision: str,
        num_threads: int | None,
        compiled_cache: Path,
    ) -> None:
        ov = require_openvino()
        config: dict[str, Any] = {
            # OpenVINO silently runs f32 models in bf16 on CPUs that have it; fp32 is asked for.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # One request's batches run one after another; parallelism lives inside each op.
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(compiled_cache),
        }
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads
        try:
            self._compiled = ov.Core().compile_model(str(artifact.path), "CPU", config)
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not compile {artifact.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.artifact = artifact
        self.precision = precision
        self.input_names = {port.get_any_name() for port in self._compiled.inputs}
        self._output = self._compiled.output("logits")
        self._local = threading.local()

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = (
                token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
            )
        result = request.infer(feeds)
        # The result views the request's own buffer, which the next batch overwrites.
        return np.array(result[self._output], dtype=np.float32, copy=True)


def load_openvino(
    registry: ModelRegistry,
    onnx: OnnxArtifact,
    *,
    precision: str,
    cache_dir: str | Path | None,
    num_threads: int | None,
    calibration: Calibration | None = None,
    calibration_digest: str | None = None,
) -> OpenVinoCrossEncoder:
    """The shared compiled model for ``onnx`` at ``precision`` ("fp32", "bf16" or "int8")."""
    quantized = precision == "int8"
    artifact = ensure_ir(
        onnx,
        quantized=quantized,
        cache_dir=cache_dir,
        calibration=calibration if quantized else None,
        calibration_digest=calibration_digest if quantized else None,
    )
    compiled_cache = cache_root(cache_dir) / "openvino" / "compiled"
    key = ("openvino-model", artifact.sha256, precision, num_threads)
    return registry.get_or_load(
        key,
        lambda: OpenVinoCrossEncoder(
            artifact,
            precision=precision,
            num_threads=num_threads,
            compiled_cache=compiled_cache,
        ),
    )
