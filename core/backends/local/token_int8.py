"""Int8 matmuls in torch with one activation scale per token, for CPUs with VNNI.

Why this exists beside ONNX Runtime's dynamic int8: ONNX Runtime scales a whole batch's
activations with one number, so one outlier token (or one outlier channel, which every BERT
LayerNorm output has) coarsens every other token's rounding. On the trained MiniLM
cross-encoder that moved rankings too far for the fidelity gate (Kendall tau about 0.89
against fp32). Here each token gets its own scale, and the LayerNorm outlier channels are
first shrunk by a per-channel factor that is folded into the weights (SmoothQuant), fitted
once at load time from activation ranges on the fidelity sample. Smoothing cannot tame the
few channels that stay far above the rest (one GELU channel feeding MiniLM's first
down-projection reaches 28x the median after it); those bypass the int8 grid as fp32
columns (LLM.int8()'s decomposition, at most four channels per layer), which lifted the
worst sample query's Kendall tau on the reference model from 0.947 to 0.958.

Only the encoder's linear layers are quantized; the pooler and classifier read one token
per pair, cost nothing, and amplify every rounding error into the score, so they stay fp32.
The rounding and rescaling around each int8 matmul are cheap elementwise work that eager
torch runs as a dozen separate passes; ``torch.compile`` fuses them, and it is what makes
this variant fast (see ``benchmarks/local_backend.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from crossrank.backends._torch import import_torch

logger = logging.getLogger(__name__)

#: SmoothQuant's migration strength: 0 leaves activations alone, 1 moves all their range
#: into the weights. On the reference model 0.5 ranked closest to fp32 (mean Kendall tau over
#: 84 queries sampled from the shared collections: 0.3 -> 0.956, 0.4 -> 0.970, 0.5 -> 0.976,
#: 0.8 -> 0.965).
DEFAULT_SMOOTHING = 0.5
#: A channel stays fp32 when its smoothed range exceeds this many medians. On the reference
#: model 8 and 4 ranked alike (mean tau 0.981 over the same 84 queries, against 0.974 with
#: none); 8 touches fewer layers.
DEFAULT_OUTLIER_RATIO = 8.0
#: More than a few fp32 columns would cost more than they save; four covers MiniLM's.
MAX_OUTLIERS = 4
_INT8_MAX = 127.0
_EPS = 1e-8

torch = import_torch()
_Module: Any = torch.nn.Module


class TokenInt8Linear(_Module):
    """``nn.Linear`` with int8 weights (one scale per output) and per-token int8 inputs.

    ``input_scale`` is the smoothing factor: inputs are divided by it per channel and the
    weight's input columns multiplied by it, which leaves the fp32 product unchanged.
    Inputs are quantized symmetrically around each token's midpoint rather than zero, so a
    one-sided range (GELU outputs, most of it >= -0.17) uses all 255 levels; the midpoint's
    contribution is added back through the weights' column sums.
    """

    def __init__(
        self,
        linear: Any,
        *,
        input_scale: Any | None = None,
        outlier_channels: Iterable[int] | None = None,
    ) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        if input_scale is not None:
            weight = weight * input_scale[None, :]
        out_features, in_features = (int(size) for size in weight.shape)
        channels = tuple(int(channel) for channel in (outlier_channels or ()))
        bulk_mask = None
        outlier_weight = None
        if channels:
            outlier_weight = weight[:, list(channels)].t().contiguous()
            bulk_mask = torch.ones(in_features)
            bulk_mask[list(channels)] = 0.0
            weight = weight * bulk_mask[None, :]
        weight_scale = weight.abs().amax(dim=1).clamp(min=_EPS) / _INT8_MAX
        quantized = torch.round(weight / weight_scale[:, None]).clamp(-_INT8_MAX, _INT8_MAX)
        self.in_features = in_features
        self.out_features = out_features
        # _int_mm wants (K, N) int8 on the right.
        self.register_buffer("weight_int8", quantized.to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_column_sum", (quantized * weight_scale[:, None]).sum(dim=1))
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias if bias is not None else torch.zeros(out_features))
        inverse = (1.0 / input_scale).float() if input_scale is not None else None
        self.register_buffer("inverse_input_scale", inverse)
        self.outlier_channels = channels
        self.register_buffer("outlier_weight", outlier_weight)
        self.register_buffer("bulk_mask", bulk_mask)

    def forward(self, inputs: Any) -> Any:
        rows = inputs.reshape(-1, self.in_features).float()
        if self.inverse_input_scale is not None:
            rows = rows * self.inverse_input_scale
        # Outlier channels bypass the int8 grid: sliced out as fp32 columns and zeroed in
        # the bulk, so they no longer set every token's step. Slices by constant index and
        # a rank-1 update per channel fuse into the surrounding kernels when compiled.
        outlier_columns = [rows[:, channel : channel + 1] for channel in self.outlier_channels]
        if outlier_columns:
            rows = rows * self.bulk_mask
        low, high = torch.aminmax(rows, dim=1, keepdim=True)
        midpoint = (high + low) * 0.5
        step = ((high - low) * 0.5).clamp(min=_EPS) / _INT8_MAX
        quantized = torch.round((rows - midpoint) / step).to(torch.int8)
        product = torch._int_mm(quantized, self.weight_int8)
        out = product * (step * self.weight_scale) + midpoint * self.weight_column_sum + self.bias
        for index, column in enumerate(outlier_columns):
            out = out + column * self.outlier_weight[index]
        return out.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_matmul_available() -> bool:
    """True when this torch has an exact CPU int8 x int8 -> int32 matmul (``torch._int_mm``).

    Exact matters: without VNNI, oneDNN's AVX2 kernels multiply through 16-bit sums that
    saturate, so a product of 127s came out as 4080 instead of 516128 (found by capping
    oneDNN at AVX2 with ``ONEDNN_MAX_CPU_ISA``). The probe uses full-scale values to see it.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        ones = torch.ones(32, 32, dtype=torch.int8)
        full = torch.full((32, 32), 127, dtype=torch.int8)
        return bool(
            torch._int_mm(ones, ones)[0, 0].item() == 32
            and torch._int_mm(full, -full)[0, 0].item() == -127 * 127 * 32
        )
    except (RuntimeError, NotImplementedError):
        return False


def _encoder_linears(network: Any) -> list[tuple[str, Any, str, Any]]:
    """(parent name, parent, attribute, layer) for every linear inside the encoder."""
    found = []
    for parent_name, parent in network.named_modules():
        for attribute, child in parent.named_children():
            full = f"{parent_name}.{attribute}" if parent_name else attribute
            if isinstance(child, torch.nn.Linear) and ".encoder." in f".{full}":
                found.append((full, parent, attribute, child))
    return found


def activation_ranges(network: Any, batches: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-channel max |input| of every encoder linear over ``batches`` (real tokens only)."""
    ranges: dict[str, Any] = {}
    hooks = []
    current_mask: list[Any] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(_module: Any, args: tuple[Any, ...], _output: Any) -> None:
            values = args[0].detach().float()
            mask = current_mask[0]
            if values.dim() == 3 and values.shape[:2] == mask.shape:
                values = values[mask]
            peak = values.abs().reshape(-1, values.shape[-1]).amax(dim=0)
            previous = ranges.get(name)
            ranges[name] = peak if previous is None else torch.maximum(previous, peak)

        return record

    for name, _parent, _attribute, layer in _encoder_linears(network):
        hooks.append(layer.register_forward_hook(recorder(name)))
    try:
        with torch.inference_mode():
            for features in batches:
                current_mask[:] = [features["attention_mask"].bool()]
                network(**features)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def quantize_encoder(
    network: Any,
    ranges: dict[str, Any] | None,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
    outlier_ratio: float | None = DEFAULT_OUTLIER_RATIO,
) -> int:
    """Swap the encoder's linears for :class:`TokenInt8Linear` in place; returns how many.

    ``ranges`` (from :func:`activation_ranges`) turns smoothing on: channel j's inputs are
    divided by ``s_j = range_j ** smoothing / max|W_j| ** (1 - smoothing)``. Channels whose
    smoothed range is still above ``outlier_ratio`` times the median channel's stay fp32
    (``None`` keeps every channel on the int8 grid). On the reference model the ratio 8
    picks one or two channels in four of the 36 linears, costing about 7% of the speed.
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
    replaced = 0
    for name, parent, attribute, layer in _encoder_linears(network):
        input_scale = None
        outlier_channels = None
        if ranges is not None and name in ranges:
            activation = ranges[name].clamp(min=1e-5)
            weight = layer.weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
            input_scale = activation.pow(smoothing) / weight.pow(1.0 - smoothing)
            if outlier_ratio is not None:
                outlier_channels = _outlier_channels(activation / input_scale, outlier_ratio)
        setattr(
            parent,
            attribute,
            TokenInt8Linear(layer, input_scale=input_scale, outlier_channels=outlier_channels),
        )
        replaced += 1
    return replaced


def _outlier_channels(smoothed_range: Any, ratio: float) -> list[int]:
    """Channels whose smoothed range exceeds ``ratio`` times the median channel's, at most
    :data:`MAX_OUTLIERS` of them, largest first.

    Measured against the median, not an absolute size, because what hurts is one channel
    setting the int8 step for all the others, whatever the layer's overall scale.
    """
    threshold = float(smoothed_range.median()) * ratio
    order = torch.argsort(smoothed_range, descending=True)[:MAX_OUTLIERS]
    return [int(channel) for channel in order if float(smoothed_range[channel]) > threshold]


class CompiledForward:
    """``torch.compile`` of a network's forward, falling back to eager if compiling fails.

    Compiling takes tens of seconds on first use (inductor caches kernels on disk, so later
    processes pay less) and needs a C++ compiler; without one the variant still runs, just
    slower, and a warning says so. Calls are serialized: torch already spreads one forward
    over every core, and dynamo's guards are not meant to be raced.
    """

    def __init__(self, network: Any, *, enabled: bool = True) -> None:
        self._eager = network
        self._compiled: Any = None
        self._lock = threading.Lock()
        if enabled:
            self._compiled = torch.compile(network, dynamic=True)

    @property
    def compiled(self) -> bool:
        """False once compiling was off or failed and calls run eager."""
        return self._compiled is not None

    def __call__(self, **features: Any) -> Any:
        with self._lock:
            if self._compiled is not None:
                rows = int(features["input_ids"].shape[0])
                if rows == 1:  # dynamo specializes size 1: a one-pair batch would recompile
                    features = {name: value.repeat(2, 1) for name, value in features.items()}
                try:
                    output = self._compiled(**features)
                    if rows == 1:
                        output.logits = output.logits[:1]
                    return output
                except Exception as exc:  # an inductor failure must not fail the request
                    logger.warning(
                        "torch.compile failed for the int8 variant (%s: %s); running eager",
                        type(exc).__name__,
                        exc,
                    )
                    self._compiled = None
            return self._eager(**features)
