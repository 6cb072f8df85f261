"""Precision variants of the local cross-encoder, token-budget batching and precision='auto'.

Tolerances (tiny 2-layer BERT, hidden 32, logits of order 0.1): torch fp32 vs predict 1e-5;
ONNX fp32 vs torch fp32 1e-4 (fused kernels reorder sums); bf16 0.05 (8-bit mantissa);
int8 0.1 (dynamic activation scales). Rankings, not scores, are what the gate checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local import auto
from crossrank.backends.local.fidelity import FidelityGate, kendall_tau, top_k_overlap
from crossrank.backends.local.scoring import encode_pairs, plan_batches
from crossrank.backends.local.variants import parse_variant
from crossrank.errors import ConfigurationError
from tests.support.cpu import needs_native_bf16

torch = pytest.importorskip("torch")

QUERY = "refunds for digital downloads"
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "",
    "the warranty covers manufacturing defects for two years " * 30,
    "paris is the capital of france",
    "a reranker reorders the candidates found by the first stage retriever",
    "bm25 ranks documents by term frequency",
]

TOLERANCES = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.1, "int8-mixed": 0.1}


def reference(path: Path) -> list[float]:
    return CrossEncoderBackend(str(path), registry=ModelRegistry()).score(QUERY, PASSAGES)


def test_fp32_equals_predict_with_identity_activation(tiny_cross_encoder_path: Path) -> None:
    backend = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry())
    predicted = backend.load().predict(
        [(QUERY, text) for text in PASSAGES], activation_fn=torch.nn.Identity()
    )
    assert np.allclose(backend.score(QUERY, PASSAGES), predicted, atol=1e-5)
    assert backend.variant.label == "torch-fp32"


@needs_native_bf16
def test_bf16_tracks_fp32(tiny_cross_encoder_path: Path) -> None:
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), precision="bf16", registry=ModelRegistry()
    )
    scores = backend.score(QUERY, PASSAGES)
    assert backend.variant.label == "torch-bf16"
    assert next(backend.load().model.parameters()).dtype == torch.bfloat16
    assert np.allclose(scores, reference(tiny_cross_encoder_path), atol=TOLERANCES["bf16"])


@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-mixed"])
def test_onnx_variants_track_fp32(
    tiny_cross_encoder_path: Path, tmp_path: Path, precision: str
) -> None:
    pytest.importorskip("onnxruntime")
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        precision=precision,
        runtime="onnx",
        cache_dir=tmp_path,
        registry=ModelRegistry(),
    )
    scores = backend.score(QUERY, PASSAGES)
    assert backend.variant.runtime == "onnx"
    expected = reference(tiny_cross_encoder_path)
    assert np.allclose(scores, expected, atol=TOLERANCES[precision])
    if precision == "fp32":
        assert kendall_tau(expected, scores) == pytest.approx(1.0)


@pytest.mark.parametrize("budget", [1, 40, 100, 10_000])
def test_token_budget_batching_matches_count_batching(
    tiny_cross_encoder_path: Path, budget: int
) -> None:
    registry = ModelRegistry()
    by_count = CrossEncoderBackend(str(tiny_cross_encoder_path), batch_size=1, registry=registry)
    by_budget = CrossEncoderBackend(
        str(tiny_cross_encoder_path), batch_size=64, token_budget=budget, registry=registry
    )
    texts = PASSAGES * 3
    assert np.allclose(by_count.score(QUERY, texts), by_budget.score(QUERY, texts), atol=1e-5)


def planned(backend: CrossEncoderBackend, queries: list[str], texts: list[str]) -> Any:
    """The encoded pairs and the batches the backend's scorer would run them in."""
    encoded = encode_pairs(backend.tokenizer, queries, texts, max_length=backend.model_max_length)
    order = np.argsort(-encoded.lengths, kind="stable")
    budget = backend.batching.budget(backend._resolved_device)
    return encoded, plan_batches(
        order, encoded.lengths, batch_size=backend.batching.batch_size, budget=budget
    )


def test_token_budget_bounds_padded_tokens_per_batch(tiny_cross_encoder_path: Path) -> None:
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), batch_size=64, token_budget=60, registry=ModelRegistry()
    )
    encoded, batches = planned(backend, [QUERY] * len(PASSAGES), PASSAGES)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(PASSAGES)))
    for batch in batches:
        padded = len(batch) * int(encoded.lengths[batch].max())
        assert padded <= 60 or len(batch) == 1


def test_default_budget_on_a_cpu_is_the_measured_one(tiny_cross_encoder_path: Path) -> None:
    from crossrank.backends.cross_encoder import DEFAULT_TOKEN_BUDGET

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", batch_size=1024, registry=ModelRegistry()
    )
    texts = [" ".join(["word"] * 30)] * 200  # ~35 tokens each: the budget, not the count, binds
    encoded, batches = planned(backend, [QUERY] * len(texts), texts)
    longest = int(encoded.lengths.max())
    assert len(batches) > 1
    assert all(len(batch) * longest <= DEFAULT_TOKEN_BUDGET for batch in batches)
    assert len(batches[0]) == DEFAULT_TOKEN_BUDGET // longest


def test_pairs_from_different_queries_score_like_single_queries(
    tiny_cross_encoder_path: Path,
) -> None:
    backend = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry())
    other = "capital of france"
    mixed = backend.score_pairs([QUERY, other, QUERY], [PASSAGES[0], PASSAGES[5], PASSAGES[1]])
    assert mixed[0] == pytest.approx(backend.score(QUERY, [PASSAGES[0]])[0], abs=1e-5)
    assert mixed[1] == pytest.approx(backend.score(other, [PASSAGES[5]])[0], abs=1e-5)
    assert mixed[2] == pytest.approx(backend.score(QUERY, [PASSAGES[1]])[0], abs=1e-5)


def test_num_threads_is_applied_to_onnx_sessions(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    registry = ModelRegistry()
    one = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        runtime="onnx",
        num_threads=1,
        cache_dir=tmp_path,
        registry=registry,
    )
    two = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        runtime="onnx",
        num_threads=2,
        cache_dir=tmp_path,
        registry=registry,
    )
    assert one.load() is not two.load()
    assert np.allclose(one.score(QUERY, PASSAGES), two.score(QUERY, PASSAGES), atol=1e-6)


def test_auto_picks_a_variant_and_records_why(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    sample = [(QUERY, PASSAGES), ("capital of france", PASSAGES)]
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        precision="auto",
        cache_dir=tmp_path,
        fidelity_sample=sample,
        registry=ModelRegistry(),
    )
    scores = backend.score(QUERY, PASSAGES)
    selection = backend.selection
    assert selection is not None
    assert selection.chosen == backend.variant.label
    assert "calibration" in selection.reason or "reference" in selection.reason
    assert selection.agreements, "every tried candidate is recorded"
    chosen = [a for a in selection.agreements if a.variant == selection.chosen]
    if selection.chosen != "torch-fp32":
        assert chosen and chosen[0].passed
    # Everything tried before the chosen one failed the gate.
    for agreement in selection.agreements:
        if agreement.variant == selection.chosen:
            break
        assert not agreement.passed
    assert len(scores) == len(PASSAGES)
    assert selection.chosen in selection.describe()


def test_auto_choice_is_remembered_across_processes_until_the_model_changes(
    tiny_cross_encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_cross_encoder_path, model)
    choices: list[str] = []  # fresh choices, each measured and checked
    original = auto.measure_and_choose

    def counting(backend: CrossEncoderBackend, sample: Any, candidates: Any) -> Any:
        choices.append(backend.model)
        return original(backend, sample, candidates)

    monkeypatch.setattr(auto, "measure_and_choose", counting)

    def fresh_process() -> CrossEncoderBackend:  # a new registry is what a new process has
        backend = CrossEncoderBackend(
            str(model),
            precision="auto",
            cache_dir=tmp_path / "cache",
            fidelity_sample=[(QUERY, PASSAGES)],
            registry=ModelRegistry(),
        )
        backend.load()
        return backend

    first = fresh_process()
    assert len(choices) == 1 and first.selection is not None
    assert first.selection.remembered_from is None
    second = fresh_process()
    assert len(choices) == 1, "the second process read the first one's choice"
    assert second.selection is not None and second.selection.remembered_from is not None
    assert second.variant == first.variant
    assert [a.variant for a in second.selection.agreements] == [
        a.variant for a in first.selection.agreements
    ]
    assert "remembered from" in second.selection.describe()
    # A garbled record is ignored and rewritten, never an error.
    (record,) = (tmp_path / "cache" / "auto-precision").glob("*.json")
    record.write_text("{not json")
    fresh_process()
    assert len(choices) == 2
    # Retrained weights (new mtime) are a different model: choose again.
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    fresh_process()
    assert len(choices) == 3


def test_auto_choice_for_an_unpinned_hub_id_is_not_remembered(tmp_path: Path) -> None:
    from crossrank.backends.local.remembered import choice_key

    common: dict[str, Any] = {
        "device": "cpu",
        "settings": {},
        "gate": FidelityGate(),
        "sample_digest": "x",
        "candidates": ["torch-fp32"],
    }
    assert choice_key(model="someone/some-reranker", revision=None, **common) is None
    pinned = choice_key(model="someone/some-reranker", revision="abc123", **common)
    assert pinned is not None
    assert choice_key(model="someone/some-reranker", revision="def456", **common) != pinned


def test_auto_with_an_impossible_gate_falls_back_to_fp32(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path),
        precision="auto",
        cache_dir=tmp_path,
        fidelity_sample=[(QUERY, PASSAGES)],
        fidelity_gate=FidelityGate(min_kendall_tau=1.01),
        registry=ModelRegistry(),
    )
    backend.load()
    assert backend.variant.label == "torch-fp32"
    assert backend.selection is not None
    assert "no faster variant" in backend.selection.reason
    assert all(not agreement.passed for agreement in backend.selection.agreements)
    predicted = backend.load().predict(
        [(QUERY, text) for text in PASSAGES], activation_fn=torch.nn.Identity()
    )
    assert np.allclose(backend.score(QUERY, PASSAGES), predicted, atol=1e-5)


def test_kendall_tau_and_overlap() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert top_k_overlap([5, 4, 3, 2, 1], [5, 4, 0, 0, 9], k=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="length"):
        kendall_tau([1, 2], [1, 2, 3])


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"precision": "int4"}, "int4"),
        ({"runtime": "tensorrt"}, "tensorrt"),
        ({"precision": "int8-mixed", "runtime": "torch"}, "runtime='onnx'"),
        ({"precision": "bf16", "runtime": "onnx"}, "bf16"),
        ({"precision": "auto", "runtime": "onnx"}, "auto"),
        ({"num_threads": 0}, "num_threads"),
        ({"dtype": "float64"}, "precision="),
        ({"dtype": "bfloat16", "precision": "int8"}, "dtype= was removed"),
        ({"fidelity_sample": [("q", [])]}, "fidelity_sample"),
        ({"fidelity_gate": 0.9}, "fidelity_gate"),
    ],
)
def test_bad_precision_options(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        CrossEncoderBackend("m", **options)  # type: ignore[arg-type]


def test_fp16_is_refused_on_cpu() -> None:
    with pytest.raises(ConfigurationError, match="GPU"):
        parse_variant("fp16", "torch", device="cpu")
