"""OpenVINO variants of the local backend: fp32 equal to torch, bf16 and NNCF int8 keep rankings,
files and compiled blobs cached, and ``auto`` / ``optimize`` treat them as candidates.

Tiny models only (tests/support/tiny_models.py); no hub. Name checks run without OpenVINO;
the rest skip with a reason when it (or NNCF, or the CPU feature) is missing.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local import auto
from crossrank.backends.local.variants import (
    FP32_TORCH,
    OPENVINO_INT8,
    Variant,
    auto_candidates,
    parse_variant,
    variant_from_label,
)
from crossrank.errors import ConfigurationError, MissingDependencyError
from tests.support.cpu import AVX2_ONLY, AVX512_VNNI_BF16, needs_native_bf16

QUERY = "refunds for digital downloads"
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "paris is the capital of france",
    "a reranker reorders the candidates found by the first stage retriever",
    "bm25 ranks documents by term frequency",
    "the store opens at nine and closes at six on weekdays",
    "digital gift cards cannot be refunded once redeemed",
]
SAMPLE = [(QUERY, PASSAGES), ("capital of france", PASSAGES), ("store hours", PASSAGES)]
OPENVINO_FP32 = Variant("openvino", "fp32")


def needs_openvino() -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (crossrank[openvino])")
    pytest.importorskip("onnxruntime")  # the ONNX export it converts uses ORT's fusions


def openvino_backend(
    model: Path, cache: Path, precision: str, registry: ModelRegistry | None = None
) -> CrossEncoderBackend:
    return CrossEncoderBackend(
        str(model),
        precision=precision,
        runtime="openvino",
        cache_dir=cache,
        fidelity_sample=SAMPLE,
        registry=registry or ModelRegistry(),
    )


def torch_reference(model: Path) -> list[list[float]]:
    backend = CrossEncoderBackend(str(model), precision="fp32", runtime="torch")
    return [backend.score(query, texts) for query, texts in SAMPLE]


# -- names, no OpenVINO needed ------------------------------------------------------------------


def test_openvino_variants_parse_and_round_trip_through_labels() -> None:
    assert parse_variant("fp32", "openvino", device="cpu") == OPENVINO_FP32
    assert parse_variant("int8", "openvino", device="cpu") == OPENVINO_INT8
    assert parse_variant("bfloat16", "openvino", device="cpu", check_hardware=False) == Variant(
        "openvino", "bf16"
    )
    for variant in (OPENVINO_FP32, OPENVINO_INT8, Variant("openvino", "bf16")):
        if variant.precision == "bf16":
            continue  # the label parse checks hardware; covered above without it
        assert variant_from_label(variant.label) == variant


@pytest.mark.parametrize("precision", ["fp16", "int8-mixed"])
def test_openvino_refuses_precisions_it_does_not_offer(precision: str) -> None:
    with pytest.raises(ConfigurationError, match=repr(precision)):
        CrossEncoderBackend("some/model", precision=precision, runtime="openvino")


def test_openvino_is_cpu_only() -> None:
    with pytest.raises(ConfigurationError, match="'cuda'"):
        parse_variant("fp32", "openvino", device="cuda")


def test_openvino_bf16_is_refused_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossrank.backends.local import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2_ONLY)
    with pytest.raises(ConfigurationError, match="native bf16"):
        parse_variant("bf16", "openvino", device="cpu")


def test_auto_lists_openvino_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a),
    )
    listed = auto_candidates("cpu", flags=AVX512_VNNI_BF16)
    assert not [variant for variant in listed if variant.runtime == "openvino"]


def test_a_missing_openvino_names_the_extra(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    backend = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32")
    with pytest.raises(MissingDependencyError, match=r"crossrank\[openvino\]"):
        backend.load()


# -- with OpenVINO ------------------------------------------------------------------------------


def test_auto_candidates_include_openvino_by_cpu_class() -> None:
    needs_openvino()
    on_avx2 = auto_candidates("cpu", flags=AVX2_ONLY)
    on_avx512 = auto_candidates("cpu", flags=AVX512_VNNI_BF16)
    assert OPENVINO_FP32 in on_avx2 and OPENVINO_FP32 in on_avx512
    assert Variant("openvino", "bf16") not in on_avx2, "no native bf16 there"
    assert on_avx2[-1] == FP32_TORCH and on_avx512[-1] == FP32_TORCH
    try:
        import nncf  # noqa: F401
    except ImportError:
        assert OPENVINO_INT8 not in on_avx2
    else:
        assert OPENVINO_INT8 in on_avx2, "auto times it here; no flag rules it out"


def test_openvino_fp32_equals_torch_fp32(tiny_cross_encoder_path: Path, tmp_path: Path) -> None:
    needs_openvino()
    backend = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32")
    scores = [backend.score(query, texts) for query, texts in SAMPLE]
    assert backend.variant == OPENVINO_FP32
    np.testing.assert_allclose(scores, torch_reference(tiny_cross_encoder_path), atol=1e-4)


def test_ir_and_compiled_blob_are_cached_and_reused(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    needs_openvino()
    first = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32")
    scores = first.score(QUERY, PASSAGES)
    artifact = first.load().artifact
    assert artifact.path.is_relative_to(tmp_path / "openvino")
    assert (artifact.path.parent / "model.bin").is_file()
    assert list((tmp_path / "openvino" / "compiled").iterdir()), "compiled blob cached"
    mtime = artifact.path.stat().st_mtime_ns
    # A fresh registry, as a new process would have: same files, same scores.
    second = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32")
    np.testing.assert_allclose(second.score(QUERY, PASSAGES), scores, atol=1e-6)
    assert second.load().artifact.path.stat().st_mtime_ns == mtime
    # One registry: one compiled model.
    registry = ModelRegistry()
    a = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32", registry)
    b = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32", registry)
    assert a.load() is b.load()


def test_threads_share_one_compiled_model(tiny_cross_encoder_path: Path, tmp_path: Path) -> None:
    needs_openvino()
    backend = openvino_backend(tiny_cross_encoder_path, tmp_path, "fp32")
    expected = backend.score(QUERY, PASSAGES)
    results: list[list[float]] = []

    def work() -> None:
        for _ in range(5):
            results.append(backend.score(QUERY, PASSAGES))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


@pytest.fixture(scope="module")
def spread_model(tiny_cross_encoder_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with weights drawn 15x wider, so its scores spread (about -1.5 to -0.4)
    instead of all sitting within 1e-4 of each other, where any rounding reorders them."""
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    directory = tmp_path_factory.mktemp("spread") / "model"
    shutil.copytree(tiny_cross_encoder_path, directory)
    model = BertForSequenceClassification.from_pretrained(str(directory))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(str(directory))
    return directory


def assert_ranking_kept(scores: list[list[float]], model: Path, tolerance: float) -> None:
    """Scores within ``tolerance`` of fp32, and every pair fp32 separates by more than twice
    that in the same order: the ranking a random tiny model can promise (its near-ties are
    noise; the fidelity gate on a trained model is the benchmark's job)."""
    reference = torch_reference(model)
    np.testing.assert_allclose(scores, reference, atol=tolerance)
    separated = 0
    for ours, theirs in zip(scores, reference, strict=True):
        for i in range(len(theirs)):
            for j in range(len(theirs)):
                if theirs[i] - theirs[j] > 2 * tolerance:
                    separated += 1
                    assert ours[i] > ours[j], (i, j, ours, theirs)
    assert separated >= 10, "the sample must separate enough pairs to mean something"


@needs_native_bf16
def test_openvino_bf16_keeps_the_ranking(spread_model: Path, tmp_path: Path) -> None:
    needs_openvino()
    backend = openvino_backend(spread_model, tmp_path, "bf16")
    scores = [backend.score(query, texts) for query, texts in SAMPLE]
    assert backend.variant.label == "openvino-bf16"
    assert_ranking_kept(scores, spread_model, tolerance=0.05)


def test_openvino_int8_keeps_the_ranking(spread_model: Path, tmp_path: Path) -> None:
    needs_openvino()
    pytest.importorskip("nncf", reason="nncf is not installed (crossrank[openvino])")
    backend = openvino_backend(spread_model, tmp_path, "int8")
    scores = [backend.score(query, texts) for query, texts in SAMPLE]
    assert backend.variant == OPENVINO_INT8
    assert "-ov-int8-" in backend.load().artifact.key
    assert_ranking_kept(scores, spread_model, tolerance=0.1)
    # Quantized, except the feed-forward down-projections (their inputs carry the outliers).
    import openvino

    graph = openvino.Core().read_model(str(backend.load().artifact.path))
    matmuls = [op for op in graph.get_ops() if op.get_type_name() == "MatMul"]

    def quantized(op: Any) -> bool:
        return op.input_value(0).get_node().get_type_name() == "FakeQuantize"

    down = [op for op in matmuls if "/output/dense/" in op.get_friendly_name()
            and "/attention/" not in op.get_friendly_name()]  # fmt: skip
    assert len(down) == 2 and not any(quantized(op) for op in down)
    assert any(quantized(op) for op in matmuls), "the other linear layers are int8"


def test_auto_times_and_checks_openvino_candidates_and_remembers(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_openvino()
    # A stand-in clock makes OpenVINO fp32 the fastest, so the decision is this CPU's alone.
    monkeypatch.setattr(auto, "auto_candidates", lambda *_a, **_k: [OPENVINO_FP32, FP32_TORCH])
    speeds = {"openvino-fp32": 300.0}

    def measure(backend: CrossEncoderBackend, *_args: Any) -> float:
        return speeds.get(backend.variant.label, 100.0)

    monkeypatch.setattr(auto, "measure_throughput", measure)
    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_cross_encoder_path, model)

    def start() -> CrossEncoderBackend:
        backend = CrossEncoderBackend(
            str(model), precision="auto", cache_dir=tmp_path / "cache",
            fidelity_sample=SAMPLE, registry=ModelRegistry(),
        )  # fmt: skip
        backend.load()
        return backend

    first = start()
    assert first.variant == OPENVINO_FP32
    assert first.selection is not None and first.selection.remembered_from is None
    second = start()
    assert second.variant == OPENVINO_FP32
    assert second.selection is not None and second.selection.remembered_from is not None
