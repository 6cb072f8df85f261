"""``precision="auto"`` on the machine it runs on, and ``crossrank optimize`` ahead of time.

Tiny models only (tests/support/tiny_models.py); no hub. Speeds are measured for real where a
test is about the measurement; where a test is about the decision, a stand-in clock says how
fast each variant is, so the outcome does not depend on this CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local import auto, cpu
from crossrank.backends.local.fidelity import FidelityGate
from crossrank.backends.local.variants import FP32_TORCH, Variant
from crossrank.cli import main
from tests.support.cpu import AVX2_ONLY, AVX512_VNNI_BF16

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

QUERY = "refunds for digital downloads"
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "paris is the capital of france",
    "a reranker reorders the candidates found by the first stage retriever",
    "bm25 ranks documents by term frequency",
]
SAMPLE = [(QUERY, PASSAGES), ("capital of france", PASSAGES)]
LENIENT = FidelityGate(min_kendall_tau=-1.0, min_top_k_overlap=0.0)
ONNX_INT8 = Variant("onnx", "int8", "dynamic")


def auto_backend(model: Path, cache_dir: Path, **options: Any) -> CrossEncoderBackend:
    """A loaded ``precision="auto"`` backend on a new registry, as a new process would have."""
    options.setdefault("fidelity_sample", SAMPLE)
    backend = CrossEncoderBackend(
        str(model), precision="auto", cache_dir=cache_dir, registry=ModelRegistry(), **options
    )
    backend.load()
    return backend


def stand_in_clock(monkeypatch: pytest.MonkeyPatch, speeds: dict[str, float]) -> None:
    """Auto tries only these variants and fp32, timed at ``speeds`` pairs/s (fp32: 100)."""
    monkeypatch.setattr(
        auto, "auto_candidates", lambda *_a, **_k: [ONNX_INT8, Variant("onnx", "fp32"), FP32_TORCH]
    )

    def measure(backend: CrossEncoderBackend, _queries: Any, _texts: Any) -> float:
        return speeds.get(backend.variant.label, 100.0)

    monkeypatch.setattr(auto, "measure_throughput", measure)


def test_the_choice_is_never_slower_than_fp32_in_its_own_measurement(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    backend = auto_backend(tiny_cross_encoder_path, tmp_path, fidelity_gate=LENIENT)
    selection = backend.selection
    assert selection is not None and selection.reference_pairs_per_second is not None
    measured = [row for row in selection.agreements if row.pairs_per_second is not None]
    assert measured, "every loadable candidate is timed"
    speeds = [row.pairs_per_second for row in measured]
    assert speeds == sorted(speeds, reverse=True), "rows come fastest first"
    for row in selection.agreements:
        if row.passed:
            assert row.speedup is not None and row.speedup >= auto.MIN_SPEEDUP
    if selection.chosen != "torch-fp32":
        (chosen,) = [row for row in selection.agreements if row.variant == selection.chosen]
        assert chosen.pairs_per_second is not None
        assert chosen.pairs_per_second > selection.reference_pairs_per_second
    assert "fp32 torch here" in selection.describe()


def test_a_faithful_variant_slower_than_fp32_is_not_chosen(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in_clock(monkeypatch, {"onnx-int8": 60.0, "onnx-fp32": 105.0})
    backend = auto_backend(tiny_cross_encoder_path, tmp_path, fidelity_gate=LENIENT)
    assert backend.variant == FP32_TORCH
    assert backend.selection is not None
    rows = {row.variant: row for row in backend.selection.agreements}
    assert "not faster than fp32" in (rows["onnx-int8"].error or "")
    assert rows["onnx-int8"].speedup == pytest.approx(0.6)
    assert not rows["onnx-fp32"].passed, "5% is within noise: below MIN_SPEEDUP"


def test_the_fastest_faithful_variant_here_wins_whatever_the_prior_order(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prior order lists ONNX int8 first; on this (stand-in) CPU ONNX fp32 is faster.
    stand_in_clock(monkeypatch, {"onnx-int8": 150.0, "onnx-fp32": 300.0})
    backend = auto_backend(tiny_cross_encoder_path, tmp_path, fidelity_gate=LENIENT)
    assert backend.variant.label == "onnx-fp32"
    assert backend.selection is not None
    order = [row.variant for row in backend.selection.agreements]
    assert order[:2] == ["onnx-fp32", "onnx-int8"]
    skipped = backend.selection.agreements[1]
    assert "not checked" in (skipped.error or ""), "slower candidates skip the ranking check"


def test_a_choice_recorded_under_other_cpu_flags_is_not_reused(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_cross_encoder_path, model)
    stand_in_clock(monkeypatch, {"onnx-int8": 300.0})
    choices: list[str] = []
    original = auto.measure_and_choose

    def counting(*args: Any) -> Any:
        choices.append("measured")
        return original(*args)

    monkeypatch.setattr(auto, "measure_and_choose", counting)
    for flags in (AVX512_VNNI_BF16, AVX512_VNNI_BF16, AVX2_ONLY, AVX512_VNNI_BF16):
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: flags)
        auto_backend(model, tmp_path / "cache", fidelity_gate=LENIENT)
    # Measured on the first VNNI CPU, remembered there, measured again on the AVX2 one.
    assert choices == ["measured", "measured"]
    records = list((tmp_path / "cache" / "auto-precision").glob("*.json"))
    assert len(records) == 2


def test_optimize_builds_everything_so_a_server_only_loads_files(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from crossrank.backends.local import onnx_export

    model = tmp_path / "model"
    shutil.copytree(tiny_cross_encoder_path, model)
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(SAMPLE), encoding="utf-8")
    output = tmp_path / "optimized"
    arguments = ["optimize", str(model), "--output", str(output), "--fidelity-sample", str(sample)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "choice recorded:" in printed and "CPU: " in printed
    assert len(list((output / "onnx").glob("*/model.onnx"))) == 3
    assert len(list((output / "onnx").glob("*/tokenizer.json"))) == 3, "onnx-lite can read them"
    assert len(list((output / "auto-precision").glob("*.json"))) == 1
    builds = dict(onnx_export.build_counts)

    def no_measuring(*_args: Any) -> Any:
        raise AssertionError("a server after optimize must not measure")

    monkeypatch.setattr(auto, "measure_and_choose", no_measuring)
    server = auto_backend(model, output, fidelity_sample=SAMPLE)
    assert server.selection is not None and server.selection.remembered_from is not None
    assert len(server.score(QUERY, PASSAGES)) == len(PASSAGES)
    assert onnx_export.build_counts == builds, "nothing was exported or quantized again"


def test_optimize_of_a_model_it_cannot_load_fails_naming_it(tmp_path: Path, capsys: Any) -> None:
    code = main(["optimize", "no-such/model", "--output", str(tmp_path), "--local-files-only"])
    assert code == 1
    assert "no-such/model" in capsys.readouterr().out


def test_auto_never_offers_torch_int8_without_vnni() -> None:
    """On an AVX2-only EPYC torch int8 ran 21x slower than fp32 (issue 23)."""
    from crossrank.backends.local.variants import TORCH_INT8, auto_candidates

    assert TORCH_INT8 not in auto_candidates("cpu", flags=AVX2_ONLY)
    assert auto_candidates("cpu", flags=AVX2_ONLY)[-1].label == "torch-fp32"


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\nbugs\t\t: none\n"
    flags = cpu.parse_cpuinfo(text)
    assert {"avx2", "avx512_vnni"} <= flags and cpu.has_fast_int8(flags)
    assert not cpu.has_fast_int8(AVX2_ONLY) and not cpu.has_native_bf16(AVX2_ONLY)
    assert cpu.feature_key(AVX2_ONLY) != cpu.feature_key(AVX512_VNNI_BF16)
    assert "sse" not in cpu.feature_key(AVX2_ONLY | {"sse"}), "only flags that change speed"


def test_the_cpu_description_names_the_flags_speed_depends_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2_ONLY)
    described = cpu.cpu_description()
    assert described.endswith(f"flags {cpu.feature_key()}")
    assert "avx2" in described and "avx512_vnni" not in described
