"""Per-token int8 for torch: the linear layer's arithmetic, smoothing, and the backend variant.

Tolerances: an int8 linear on unit-scale inputs is within about 1% of fp32 (255 levels per
token, 255 per output channel); the tiny 2-layer BERT's logits (order 0.1) stay within 0.1
of fp32, as for ONNX int8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local.cpu import feature_key
from crossrank.backends.local.variants import (
    TORCH_INT8,
    auto_candidates,
    parse_variant,
    torch_int8_supported,
)
from crossrank.errors import ConfigurationError
from tests.support.cpu import AVX512_VNNI_BF16
from tests.test_local_precision import PASSAGES, QUERY

torch = pytest.importorskip("torch")
if not torch_int8_supported():
    pytest.skip(
        "this torch has no exact CPU int8 matmul (torch._int_mm saturates without VNNI or "
        f"AMX): {feature_key()}",
        allow_module_level=True,
    )

from crossrank.backends.local.token_int8 import (  # noqa: E402
    MAX_OUTLIERS,
    CompiledForward,
    TokenInt8Linear,
    _outlier_channels,
    activation_ranges,
    quantize_encoder,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved smoothing ranges go to this test's folder, not the user's cache."""
    monkeypatch.setenv("CROSSRANK_CACHE_DIR", str(tmp_path / "crossrank-cache"))


def _linear(in_features: int = 64, out_features: int = 48, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


def _relative_error(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return float((expected - actual).detach().norm() / expected.detach().norm())


def test_int8_linear_tracks_fp32() -> None:
    linear = _linear()
    inputs = torch.randn(3, 10, 64)
    expected = linear(inputs)
    actual = TokenInt8Linear(linear)(inputs)
    assert actual.shape == expected.shape
    assert _relative_error(expected, actual) < 0.02


def test_each_token_is_scaled_alone() -> None:
    """A huge token beside a small one leaves the small one's output as it was alone."""
    layer = TokenInt8Linear(_linear())
    small = torch.randn(1, 64) * 0.01
    huge = torch.randn(1, 64) * 1000.0
    alone = layer(small)
    together = layer(torch.cat([small, huge]))
    assert torch.equal(together[:1], alone)
    assert _relative_error(_linear()(small), alone) < 0.02


def test_one_sided_inputs_use_the_whole_range() -> None:
    """Inputs in [5, 6] round on their own range's grid, not on one centred at zero."""
    layer = TokenInt8Linear(_linear(seed=1))
    weights = layer.weight_int8.float() * layer.weight_scale  # the int8 weights, as floats
    inputs = torch.rand(200, 64) + 5.0
    exact_inputs = inputs @ weights + layer.bias
    step = inputs.abs().amax(dim=1, keepdim=True) / 127  # a zero-centred grid per token
    zero_centred = torch.round(inputs / step) * step @ weights + layer.bias
    ours = layer(inputs)
    assert _relative_error(exact_inputs, ours) < _relative_error(exact_inputs, zero_centred) / 4


def test_smoothing_is_exact_in_fp32_and_helps_with_outlier_channels() -> None:
    linear = _linear(seed=2)
    inputs = torch.randn(400, 64)
    inputs[:, 5] *= 60.0  # one outlier channel, as BERT LayerNorm outputs have
    expected = linear(inputs)
    plain = TokenInt8Linear(linear)
    scale = inputs.abs().amax(dim=0).sqrt() / linear.weight.abs().amax(dim=0).sqrt()
    smoothed = TokenInt8Linear(linear, input_scale=scale)
    # The smoothing itself changes nothing: (x / s) @ (W * s)^T == x @ W^T.
    folded = (inputs * smoothed.inverse_input_scale) @ (linear.weight * scale).T + linear.bias
    assert torch.allclose(folded, expected, atol=1e-3)
    assert _relative_error(expected, smoothed(inputs)) < _relative_error(expected, plain(inputs))


def test_outlier_channels_bypass_the_int8_grid() -> None:
    linear = _linear(seed=3)
    inputs = torch.randn(400, 64)
    inputs[:, 7] *= 60.0
    expected = linear(inputs)
    plain = TokenInt8Linear(linear)
    bypassed = TokenInt8Linear(linear, outlier_channels=[7])
    assert bypassed.outlier_channels == (7,)
    plain_error = _relative_error(expected, plain(inputs))
    assert _relative_error(expected, bypassed(inputs)) < plain_error / 4
    # The outlier's own contribution is fp32 arithmetic, not rounded: alone, it is exact.
    only_outlier = torch.zeros(3, 64)
    only_outlier[:, 7] = torch.tensor([-90.0, 0.5, 123.0])
    assert torch.allclose(bypassed(only_outlier), linear(only_outlier), atol=1e-4)


def test_outlier_channels_are_the_few_far_above_the_median() -> None:
    ranges = torch.ones(64)
    ranges[3], ranges[9], ranges[20] = 30.0, 12.0, 5.0
    assert _outlier_channels(ranges, 8.0) == [3, 9]
    assert _outlier_channels(ranges, 4.0) == [3, 9, 20]
    assert _outlier_channels(torch.ones(64), 8.0) == []
    many = torch.ones(64)
    many[: MAX_OUTLIERS + 3] = torch.arange(MAX_OUTLIERS + 3, dtype=torch.float32) + 20.0
    assert len(_outlier_channels(many, 8.0)) == MAX_OUTLIERS
    assert _outlier_channels(many, 8.0)[0] == MAX_OUTLIERS + 2  # the largest first


def test_compiled_outlier_bypass_equals_eager() -> None:
    layer = TokenInt8Linear(_linear(seed=4), outlier_channels=[1, 30])
    inputs = torch.randn(2, 9, 64)
    inputs[..., 30] *= 50.0
    compiled = torch.compile(layer, dynamic=True)
    with torch.inference_mode():
        assert torch.allclose(compiled(inputs), layer(inputs), atol=1e-4)


def test_quantize_encoder_keeps_head_in_fp32(tiny_cross_encoder_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    network = CrossEncoder(str(tiny_cross_encoder_path), device="cpu").model
    features = CrossEncoder(str(tiny_cross_encoder_path), device="cpu").tokenizer(
        [QUERY] * len(PASSAGES), PASSAGES, padding=True, truncation=True, return_tensors="pt"
    )
    ranges = activation_ranges(network, [dict(features)])
    encoder_linears = [
        name
        for name, module in network.named_modules()
        if isinstance(module, torch.nn.Linear) and ".encoder." in name
    ]
    assert set(ranges) == {name for name in encoder_linears}
    assert quantize_encoder(network, ranges) == len(encoder_linears)
    kinds = {name: type(module).__name__ for name, module in network.named_modules()}
    assert all(kinds[name] == "TokenInt8Linear" for name in encoder_linears)
    assert kinds["classifier"] == "Linear"
    with pytest.raises(ValueError, match="smoothing"):
        quantize_encoder(network, ranges, smoothing=1.5)


def _broken_compile(*_args: object, **_kwargs: object) -> object:
    """A ``torch.compile`` whose compiled function fails when called, as without a compiler."""

    def fail(**_features: object) -> None:
        raise RuntimeError("no C++ compiler")

    return fail


def _fp32_scores(path: Path) -> list[float]:
    return CrossEncoderBackend(str(path), registry=ModelRegistry()).score(QUERY, PASSAGES)


def _eager_int8(path: Path) -> CrossEncoderBackend:
    """The torch int8 variant uncompiled, on a fresh registry: quick to build in tests."""
    return CrossEncoderBackend(
        str(path), precision="int8", runtime="torch", compile=False, registry=ModelRegistry()
    )


def test_torch_int8_variant_tracks_fp32(tiny_cross_encoder_path: Path) -> None:
    backend = _eager_int8(tiny_cross_encoder_path)
    scores = backend.score(QUERY, PASSAGES)
    assert backend.variant.label == "torch-int8"
    assert np.allclose(scores, _fp32_scores(tiny_cross_encoder_path), atol=0.1)
    assert backend.score(QUERY, PASSAGES[:1]) == pytest.approx(scores[:1], abs=1e-5)


def test_compiled_int8_equals_eager_int8_for_every_batch_shape(
    tiny_cross_encoder_path: Path,
) -> None:
    registry = ModelRegistry()
    options = {"precision": "int8", "runtime": "torch", "registry": registry, "batch_size": 4}
    eager = CrossEncoderBackend(str(tiny_cross_encoder_path), compile=False, **options)
    compiled = CrossEncoderBackend(str(tiny_cross_encoder_path), compile=True, **options)
    assert eager.load() is not compiled.load(), "compiled and eager are separate copies"
    for texts in (PASSAGES, PASSAGES[:1], PASSAGES[2:5]):  # batches of 4 + 4, 1, 3
        assert np.allclose(eager.score(QUERY, texts), compiled.score(QUERY, texts), atol=1e-4)


def test_compiled_forward_falls_back_to_eager_when_compiling_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Network(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids * 2

    monkeypatch.setattr(torch, "compile", _broken_compile)
    forward = CompiledForward(Network())
    ids = torch.ones(2, 3, dtype=torch.long)
    with caplog.at_level("WARNING"):
        assert torch.equal(forward(input_ids=ids), ids * 2)
    assert "no C++ compiler" in caplog.text
    assert torch.equal(forward(input_ids=ids), ids * 2)


@pytest.mark.parametrize(
    ("precision", "runtime", "fragment"),
    [("int8-mixed", "torch", "runtime='onnx'"), ("int8", "torch", "CPU only")],
)
def test_torch_int8_bad_combinations(precision: str, runtime: str, fragment: str) -> None:
    device = "cuda" if fragment == "CPU only" else "cpu"
    with pytest.raises(ConfigurationError, match=fragment):
        parse_variant(precision, runtime, device=device)


def test_auto_tries_torch_int8_only_when_it_will_be_compiled() -> None:
    assert TORCH_INT8 in auto_candidates("cpu", flags=AVX512_VNNI_BF16)
    assert TORCH_INT8 not in auto_candidates("cpu", compiled=False, flags=AVX512_VNNI_BF16)


def _offer_only_int8_then_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto may try only torch int8, and times it (a stand-in clock) 10x faster than fp32,
    so the tests below are about its loading and remembering, whatever this CPU's speed."""
    from crossrank.backends.local import auto
    from crossrank.backends.local.variants import FP32_TORCH

    monkeypatch.setattr(auto, "auto_candidates", lambda *_a, **_k: [TORCH_INT8, FP32_TORCH])
    def measure(backend: CrossEncoderBackend, _queries: object, texts: list[str]) -> float:
        return len(texts) * (10.0 if backend.precision == "int8" else 1.0)

    monkeypatch.setattr(auto, "measure_throughput", measure)


def _auto_in_a_fresh_process(model: Path, cache_dir: Path, **options: Any) -> CrossEncoderBackend:
    """A loaded ``precision="auto"`` backend on a new registry, as a new process would have."""
    backend = CrossEncoderBackend(
        str(model),
        precision="auto",
        cache_dir=cache_dir,
        fidelity_sample=[(QUERY, PASSAGES)],
        registry=ModelRegistry(),
        **options,
    )
    backend.load()
    return backend


def test_auto_passes_over_torch_int8_when_compiling_fails(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "compile", _broken_compile)
    _offer_only_int8_then_fp32(monkeypatch)
    backend = _auto_in_a_fresh_process(tiny_cross_encoder_path, tmp_path)
    assert backend.selection is not None
    assert backend.variant.label == "torch-fp32"
    (int8,) = [a for a in backend.selection.agreements if a.variant == "torch-int8"]
    assert not int8.passed and "torch.compile failed" in (int8.error or "")


def test_a_remembered_torch_int8_choice_is_made_afresh_once_compiling_fails(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A choice remembered where compiling worked must not run eager int8 where it fails."""
    from crossrank.backends.local.fidelity import FidelityGate
    from crossrank.backends.local.variants import FP32_TORCH

    _offer_only_int8_then_fp32(monkeypatch)
    # any ranking agrees, so the first process surely chooses torch int8
    lenient = FidelityGate(min_kendall_tau=-1.0, min_top_k_overlap=0.0)

    def fresh_process() -> CrossEncoderBackend:
        return _auto_in_a_fresh_process(tiny_cross_encoder_path, tmp_path, fidelity_gate=lenient)

    first = fresh_process()
    assert first.variant == TORCH_INT8 and not first.compile_fell_back
    second = fresh_process()
    assert second.selection is not None and second.selection.remembered_from is not None
    monkeypatch.setattr(torch, "compile", _broken_compile)
    later = fresh_process()
    assert later.variant == FP32_TORCH
    assert later.selection is not None and later.selection.remembered_from is None
    (int8,) = [a for a in later.selection.agreements if a.variant == "torch-int8"]
    assert "torch.compile failed" in (int8.error or "")


def test_torch_int8_refuses_a_model_it_cannot_quantize(
    tiny_cross_encoder_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An architecture without an ``encoder`` module is an error, not fp32 labelled int8."""
    import crossrank.backends.local.token_int8 as token_int8

    monkeypatch.setattr(token_int8, "_encoder_linears", lambda _network: [])
    backend = _eager_int8(tiny_cross_encoder_path)
    with pytest.raises(ConfigurationError, match="runtime='onnx'") as raised:
        backend.load()
    assert str(tiny_cross_encoder_path) in str(raised.value)


def test_smoothing_ranges_are_saved_so_a_later_process_skips_the_sample_pass(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crossrank.backends.local.token_int8 as token_int8

    passes: list[int] = []
    original = token_int8.activation_ranges

    def counting(network: Any, batches: Any) -> Any:
        passes.append(1)
        return original(network, batches)

    monkeypatch.setattr(token_int8, "activation_ranges", counting)

    def fresh_process() -> list[float]:
        backend = CrossEncoderBackend(
            str(tiny_cross_encoder_path),
            precision="int8",
            runtime="torch",
            compile=False,
            cache_dir=tmp_path,
            registry=ModelRegistry(),
        )
        return backend.score(QUERY, PASSAGES)

    first = fresh_process()
    assert passes == [1] and list((tmp_path / "int8-ranges").glob("*.pt"))
    assert fresh_process() == first
    assert passes == [1], "the second process read the saved ranges"
