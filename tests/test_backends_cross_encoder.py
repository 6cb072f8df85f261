"""The local cross-encoder backend: parity with CrossEncoder.predict, loading, sharing, errors."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

from crossrank import Candidate, ModelLoadError, ModelRegistry, Reranker
from crossrank.backends.cross_encoder import CrossEncoderBackend
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
]


def predict_raw(backend: CrossEncoderBackend, texts: list[str]) -> np.ndarray:
    model = backend.load()
    return model.predict(
        [(QUERY, text) for text in texts], activation_fn=torch.nn.Identity(), batch_size=4
    )


def test_scores_equal_predict_on_tiny_model(tiny_cross_encoder_path: Path) -> None:
    backend = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry())
    ours = backend.score(QUERY, PASSAGES)
    assert np.allclose(ours, predict_raw(backend, PASSAGES), atol=1e-5)


@pytest.mark.slow
def test_scores_equal_predict_on_minilm_with_seeded_head(minilm_path: Path) -> None:
    torch.manual_seed(1234)
    backend = CrossEncoderBackend(str(minilm_path), registry=ModelRegistry(), batch_size=3)
    texts = PASSAGES * 3
    assert np.allclose(backend.score(QUERY, texts), predict_raw(backend, texts), atol=1e-5)


def test_token_budget_batching_gives_identical_scores(tiny_cross_encoder_path: Path) -> None:
    registry = ModelRegistry()
    by_count = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry, batch_size=2)
    by_budget = CrossEncoderBackend(
        str(tiny_cross_encoder_path), registry=registry, batch_size=64, token_budget=100
    )
    assert np.allclose(by_count.score(QUERY, PASSAGES), by_budget.score(QUERY, PASSAGES), atol=1e-5)


def test_model_is_loaded_once_and_shared(tiny_cross_encoder_path: Path) -> None:
    registry = ModelRegistry()
    first = Reranker(CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry))
    second = Reranker(CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry))
    first.rerank(QUERY, PASSAGES[:2])
    second.rerank(QUERY, PASSAGES[:2])
    assert registry.load_count == 1
    assert first.backend.load() is second.backend.load()  # type: ignore[attr-defined]


def test_default_registry_is_shared_across_rerankers(tiny_cross_encoder_path: Path) -> None:
    first = Reranker("cross-encoder", model=str(tiny_cross_encoder_path))
    second = Reranker("local", model=str(tiny_cross_encoder_path))
    assert first.backend.load() is second.backend.load()  # type: ignore[attr-defined]


def test_reranker_orders_by_model_logits(tiny_cross_encoder_path: Path) -> None:
    reranker = Reranker("cross-encoder", model=str(tiny_cross_encoder_path), windowing=False)
    candidates = [Candidate(text, id=str(i)) for i, text in enumerate(PASSAGES)]
    result = reranker.rerank(QUERY, candidates)
    raw = reranker.backend.score(QUERY, PASSAGES)
    assert [item.id for item in result] == [
        str(i) for i in np.argsort(-np.array(raw), kind="stable")
    ]
    assert [item.raw_score for item in result] == pytest.approx(sorted(raw, reverse=True))


def test_long_passages_are_windowed(tiny_cross_encoder_path: Path) -> None:
    # The tiny model reads 128 tokens; a 300-word passage must become several windows.
    reranker = Reranker("cross-encoder", model=str(tiny_cross_encoder_path))
    result = reranker.rerank(QUERY, [PASSAGES[4], PASSAGES[0]])
    assert result.report.windows_scored > 2
    assert result.report.pairs_scored == 2


@needs_native_bf16
def test_bfloat16_scores_track_float32(tiny_cross_encoder_path: Path) -> None:
    fp32 = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry())
    bf16 = CrossEncoderBackend(
        str(tiny_cross_encoder_path), registry=ModelRegistry(), precision="bf16"
    )
    assert np.allclose(fp32.score(QUERY, PASSAGES), bf16.score(QUERY, PASSAGES), atol=0.05)


def test_two_label_model_needs_label_index(tmp_path: Path) -> None:
    from tests.support.tiny_models import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(ConfigurationError, match="2 output labels"):
        CrossEncoderBackend(str(path), registry=ModelRegistry()).score(QUERY, PASSAGES[:2])
    backend = CrossEncoderBackend(str(path), registry=ModelRegistry(), label_index=1)
    logits = backend.load().predict(
        [(QUERY, text) for text in PASSAGES[:2]], activation_fn=torch.nn.Identity()
    )
    assert np.allclose(backend.score(QUERY, PASSAGES[:2]), logits[:, 1], atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt"])
def test_unloadable_model_gives_clear_error(
    tmp_path: Path, kind: str, tiny_cross_encoder_path: Path
) -> None:
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "corrupt":
        path.mkdir()
        for source in tiny_cross_encoder_path.iterdir():
            (path / source.name).write_bytes(source.read_bytes())
        (path / "model.safetensors").write_bytes(b"this is not a safetensors file")
    backend = CrossEncoderBackend(str(path), registry=ModelRegistry(), local_files_only=True)
    with pytest.raises(ModelLoadError, match=kind):
        backend.load()
    result = Reranker(backend).rerank(QUERY, ["a", "b"])
    assert result.report.status == "fallback"
    assert "could not load cross-encoder" in (result.report.error or "")


def test_trust_remote_code_is_off_by_default() -> None:
    assert CrossEncoderBackend("any").trust_remote_code is False


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"model": ""}, "model"),
        ({"batch_size": 0}, "batch_size"),
        ({"token_budget": 0}, "token_budget"),
        ({"max_length": 2}, "max_length"),
    ],
)
def test_bad_options(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        backend = CrossEncoderBackend(**{"model": "m", **options})  # type: ignore[arg-type]
        backend.load()


@pytest.mark.parametrize(
    ("option", "fragment"),
    [("dtype", "precision="), ("calibration", "fidelity_sample="), ("batchsize", "batch_size")],
)
def test_removed_and_unknown_options_say_what_to_write(option: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        CrossEncoderBackend("m", **{option: "bfloat16"})  # type: ignore[arg-type]


def test_removed_dtype_is_a_clear_error_through_the_reranker() -> None:
    with pytest.raises(ConfigurationError, match="precision="):
        Reranker("cross-encoder", model="m", backend_options={"dtype": "bfloat16"})


def test_backend_pickles_and_shares_the_loaded_model(tiny_cross_encoder_path: Path) -> None:
    registry = ModelRegistry()
    backend = CrossEncoderBackend(str(tiny_cross_encoder_path), registry=registry)
    expected = backend.score(QUERY, PASSAGES)
    restored = pickle.loads(pickle.dumps(backend))
    assert restored.score(QUERY, PASSAGES) == expected
    assert restored.load() is backend.load(), "same process: the registry's copy is shared"
    assert registry.load_count == 1
    duplicate = copy.deepcopy(backend)
    assert duplicate.score(QUERY, PASSAGES) == expected
    assert duplicate.load() is backend.load()


def test_pickled_backend_loads_lazily_in_a_fresh_registry(tiny_cross_encoder_path: Path) -> None:
    """In another process the registry of that name starts empty and the model reloads."""
    from crossrank.registry import registry_named

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), registry=ModelRegistry(name="pickle-test-a")
    )
    expected = backend.score(QUERY, PASSAGES)
    payload = pickle.dumps(backend)
    assert len(payload) < 10_000, "the model's weights are not in the pickle"
    del backend
    import gc

    gc.collect()  # the registry lived only through the backend: a new process would lack it
    restored = pickle.loads(payload)
    assert restored._registry is registry_named("pickle-test-a")
    assert np.allclose(restored.score(QUERY, PASSAGES), expected, atol=1e-6)


def test_reranker_around_a_local_backend_pickles(tiny_cross_encoder_path: Path) -> None:
    reranker = Reranker(CrossEncoderBackend(str(tiny_cross_encoder_path), registry=ModelRegistry()))
    expected = reranker.rerank(QUERY, PASSAGES[:3])
    for restored in (pickle.loads(pickle.dumps(reranker)), copy.deepcopy(reranker)):
        assert restored.rerank(QUERY, PASSAGES[:3]).scores == expected.scores


def test_auto_options_round_trip_through_a_saved_config() -> None:
    import json

    from crossrank.backends.local.fidelity import FidelityGate

    options = {
        "precision": "auto",
        "fidelity_gate": FidelityGate(min_kendall_tau=0.9, top_k=5),
        "fidelity_sample": [("capital of france", ["paris", "berlin"])],
        "score_cache_size": 64,
    }
    reranker = Reranker("cross-encoder", model="m", backend_options=options)
    saved = json.loads(json.dumps(reranker.to_config()))
    restored = Reranker.from_config(saved)
    backend = restored.backend
    assert isinstance(backend, CrossEncoderBackend)
    assert backend.auto == reranker.backend.auto  # type: ignore[attr-defined]
    assert backend.score_cache_size == 64
