"""Which numeric variant of a local cross-encoder runs: runtime (torch / ONNX Runtime / OpenVINO)
x precision.

One switch (``precision=`` plus ``runtime=``) names a variant; this module turns the pair into
a :class:`Variant`, checks that the hardware can run it, and lists the candidates
``precision="auto"`` may try on this CPU. It imports nothing heavy: the hardware probe
imports torch only when asked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from crossrank.backends.local.cpu import cpu_flags, has_fast_int8, has_native_bf16
from crossrank.errors import ConfigurationError

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-mixed", "auto")
RUNTIMES = ("torch", "onnx", "openvino", "auto")

#: Aliases accepted for ``precision=`` (torch's dtype names mean the same precisions).
_PRECISION_ALIASES = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "int8-dynamic": "int8",
}


@dataclass(frozen=True)
class Variant:
    """One concrete way to run the model.

    ``quantization`` is ``None`` for float variants; ``"token"`` (torch) quantizes the
    encoder's linear layers to int8 with one activation scale per token, after smoothing
    outlier channels into the weights (:mod:`crossrank.backends.local.token_int8`);
    ``"dynamic"`` (ONNX Runtime) quantizes every linear
    layer's weights per channel and its activations per batch at run time; ``"dynamic-mixed"``
    quantizes only the plain linear layers and keeps in fp32 the fused attention (QKV
    projection and softmax) and each feed-forward block's down-projection, whose input (after
    GELU) has the outliers that make per-tensor activation scales coarse. On the trained
    MiniLM cross-encoder this lifted Kendall tau against fp32 from about 0.89 to about 0.94.
    ``"nncf"`` (OpenVINO) is NNCF's post-training int8 for transformers: SmoothQuant, static
    activation scales calibrated on the fidelity sample, softmax, LayerNorm and the
    feed-forward down-projections left in float.
    """

    runtime: str
    precision: str
    quantization: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def __str__(self) -> str:
        return self.label


FP32_TORCH = Variant("torch", "fp32")
TORCH_INT8 = Variant("torch", "int8", "token")
OPENVINO_INT8 = Variant("openvino", "int8", "nncf")


def canonical_precision(precision: str) -> str:
    """``precision`` with aliases resolved (``"bfloat16"`` -> ``"bf16"``), lower-cased."""
    name = precision.strip().lower()
    return _PRECISION_ALIASES.get(name, name)


def parse_variant(
    precision: str, runtime: str, *, device: str, check_hardware: bool = True
) -> Variant:
    """Resolve ``precision``/``runtime`` to a variant, or raise naming the bad value.

    ``check_hardware=False`` validates names only (no torch import), for constructors.
    ``precision="auto"`` is not resolved here (it needs measuring); callers check it
    first. ``runtime="auto"`` means torch for float precisions and ONNX Runtime for int8.
    ``precision="int8"`` with ``runtime="torch"`` is the per-token int8 variant; it needs a
    torch with a CPU int8 matmul, and ``"int8-mixed"`` is an ONNX Runtime recipe only.
    """
    if not isinstance(precision, str):
        raise ConfigurationError(f"precision must be a string, got {precision!r}")
    name = canonical_precision(precision)
    if name not in PRECISIONS or name == "auto":
        raise ConfigurationError(
            f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}"
        )
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")
    on_gpu = device.startswith(("cuda", "mps"))
    if runtime == "openvino":
        return _openvino_variant(name, precision, device, check_hardware=check_hardware)
    if name.startswith("int8"):
        if on_gpu:
            raise ConfigurationError(f"precision {precision!r} runs on CPU only, not {device!r}")
        if runtime == "torch":
            if name != "int8":
                raise ConfigurationError(
                    f"precision {precision!r} needs runtime='onnx'; with runtime='torch' use "
                    "precision='int8' (per-token int8)"
                )
            if check_hardware and not torch_int8_supported():
                raise ConfigurationError(
                    "precision 'int8' with runtime='torch' needs an exact CPU int8 matmul "
                    "(torch._int_mm with VNNI or AMX; on AVX2 alone its sums saturate); "
                    "use runtime='onnx'"
                )
            return TORCH_INT8
        quantization = "dynamic" if name == "int8" else "dynamic-mixed"
        return Variant("onnx", name, quantization)
    resolved_runtime = "torch" if runtime == "auto" else runtime
    if resolved_runtime == "onnx":
        if name != "fp32":
            raise ConfigurationError(
                f"precision {precision!r} is not available with runtime='onnx'; use fp32 or int8"
            )
        if on_gpu:
            raise ConfigurationError(f"runtime='onnx' runs on CPU only here, not {device!r}")
    if name == "bf16" and check_hardware and not on_gpu and not cpu_supports_bf16():
        raise ConfigurationError(
            "precision 'bf16' needs a CPU with native bf16 (avx512_bf16 or AMX); this one has "
            "neither, so it would run slower than fp32"
        )
    if name == "fp16" and not on_gpu:
        raise ConfigurationError(f"precision 'fp16' is for GPUs; on {device!r} use 'bf16'")
    return Variant(resolved_runtime, name)


def _openvino_variant(name: str, precision: str, device: str, *, check_hardware: bool) -> Variant:
    """OpenVINO runs fp32, bf16 (native bf16 only) and NNCF int8, on the CPU."""
    if name not in ("fp32", "bf16", "int8"):
        raise ConfigurationError(
            f"precision {precision!r} is not available with runtime='openvino'; "
            "use fp32, bf16 or int8"
        )
    if device.startswith(("cuda", "mps")):
        raise ConfigurationError(f"runtime='openvino' runs on CPU only here, not {device!r}")
    if name == "int8":
        return OPENVINO_INT8
    if name == "bf16" and check_hardware and not has_native_bf16():
        raise ConfigurationError(
            "precision 'bf16' needs a CPU with native bf16 (avx512_bf16 or AMX); this one has "
            "neither, so it would run slower than fp32"
        )
    return Variant("openvino", name)


@functools.lru_cache(maxsize=1)
def torch_int8_supported() -> bool:
    """True when torch multiplies int8 matrices exactly on this CPU (``torch._int_mm``)."""
    try:
        from crossrank.backends.local.token_int8 import int8_matmul_available
    except ImportError:
        return False
    return int8_matmul_available()


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when oneDNN can run bf16 matmuls natively on this CPU."""
    try:
        import torch

        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        if probe is not None:
            return bool(probe())
    except Exception:
        pass
    return has_native_bf16()


def auto_candidates(
    device: str, *, compiled: bool = True, flags: frozenset[str] | None = None
) -> list[Variant]:
    """Variants ``precision="auto"`` may try on this device, in the order they are tried.

    The order is a prior from ``benchmarks/local_backend.py`` on an AVX-512 VNNI CPU; auto
    measures each one's speed where it runs and orders by that, so the list only decides who
    is loaded first. It leaves out what cannot be fast here: torch int8 without VNNI or AMX
    (``flags``, default this CPU's; on an AVX2-only EPYC it ran 21x slower than fp32) or
    without compiling (eager, it runs behind bf16), and bf16 without native support.
    OpenVINO's variants join when ``openvino`` is installed (int8 also needs ``nncf``). The
    fp32 torch reference ends the list.
    """
    if device.startswith(("cuda", "mps")):
        return [Variant("torch", "fp16"), FP32_TORCH]
    present = cpu_flags() if flags is None else flags
    candidates = [Variant("onnx", "int8", "dynamic")]
    if compiled and has_fast_int8(present) and torch_int8_supported():
        candidates.append(TORCH_INT8)
    candidates.append(Variant("onnx", "int8-mixed", "dynamic-mixed"))
    if cpu_supports_bf16() and (flags is None or has_native_bf16(present)):
        candidates.append(Variant("torch", "bf16"))
    candidates.append(Variant("onnx", "fp32"))
    candidates.extend(_openvino_candidates(present))
    candidates.append(FP32_TORCH)
    return candidates


def _openvino_candidates(flags: frozenset[str]) -> list[Variant]:
    """OpenVINO int8 (with NNCF installed), bf16 (native bf16 only) and fp32, when installed.

    int8 is listed without VNNI too: OpenVINO's kernels differ from torch's, and auto times
    every candidate here, so a slow one is dropped unscored.
    """
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return []
    listed = []
    if importlib.util.find_spec("nncf") is not None:
        listed.append(OPENVINO_INT8)
    if has_native_bf16(flags):
        listed.append(Variant("openvino", "bf16"))
    listed.append(Variant("openvino", "fp32"))
    return listed


def variant_from_label(label: str) -> Variant:
    """The variant a label such as ``"onnx-int8-mixed"`` names (labels are stored on disk)."""
    runtime, _, precision = label.partition("-")
    return parse_variant(precision, runtime, device="cuda" if precision == "fp16" else "cpu")
