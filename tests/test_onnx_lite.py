"""The torch-free path: an optimize artifact scored with onnxruntime + tokenizers + numpy.

Tiny models only (tests/support/tiny_models.py), never a hub. The head of the tiny model is
scaled up so its scores spread like a trained model's: a freshly initialised head gives every
pair nearly the same logit, and no ranking could then be compared.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossrank import Candidate, ModelRegistry, Reranker
from crossrank.backends import create_backend
from crossrank.backends.lite_artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    SETTINGS_FILE,
    TOKENIZER_FILE,
    build_lite_artifact,
)
from crossrank.backends.onnx_lite import OnnxLiteBackend
from crossrank.errors import ConfigurationError
from tests.support.paths import REPO_ROOT

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

QUERIES = ["refunds for digital downloads", "capital of france", "how do cross encoders work"]
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "paris is the capital of france and sits on the seine",
    "cross encoders read the query and the passage together",
    "bm25 ranks documents by term frequency and inverse document frequency",
    "a reranker reorders the candidates found by the first stage retriever",
    "the warranty covers manufacturing defects for two years",
    "to reset your password open settings and choose security",
    "cats purr",
    "the capital of germany is berlin and about 3.7 million people live there " * 3,
    "dogs bark all day long in the park",
]
LONG_PASSAGE = " ".join(PASSAGES[:9] * 6)  # several times the tiny model's 128 tokens


@pytest.fixture(scope="module")
def spread_model(tiny_cross_encoder_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cross-encoder with its head scaled so scores differ by more than rounding."""
    import torch
    from transformers import BertForSequenceClassification

    target = tmp_path_factory.mktemp("spread-cross-encoder")
    for file in tiny_cross_encoder_path.iterdir():
        if file.name.startswith("tokenizer") or file.name == "special_tokens_map.json":
            shutil.copy(file, target / file.name)
    model = BertForSequenceClassification.from_pretrained(str(tiny_cross_encoder_path))
    with torch.no_grad():
        model.classifier.weight.mul_(5000.0)
    model.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def artifacts(spread_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fp32 and int8 artifact folders with their lite files, in one cache."""
    cache = tmp_path_factory.mktemp("lite-cache")
    return {
        "cache": cache,
        "fp32": build_lite_artifact(str(spread_model), quantization=None, cache_dir=cache),
        "int8": build_lite_artifact(str(spread_model), quantization="dynamic", cache_dir=cache),
    }


def torch_backend(model: Path, **options: Any) -> Any:
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    return CrossEncoderBackend(str(model), registry=ModelRegistry(), **options)


def lite(folder: Path, **options: Any) -> OnnxLiteBackend:
    return OnnxLiteBackend(folder, registry=ModelRegistry(), **options)


def test_fp32_scores_equal_the_torch_backend(
    spread_model: Path, artifacts: dict[str, Any]
) -> None:
    reference = torch_backend(spread_model)
    # small batches and budgets, so length sorting and batching are exercised too
    backend = lite(artifacts["fp32"], batch_size=3, token_budget=96)
    for query in QUERIES:
        expected = np.array(reference.score(query, PASSAGES))
        assert np.ptp(expected) > 0.1, "the scaled head spreads scores"
        np.testing.assert_allclose(backend.score(query, PASSAGES), expected, atol=1e-4, rtol=0)
    # pairs beyond the 128-token input: truncated longest-first, the query too when it is long
    long_query = " ".join(QUERIES * 20)
    for query, texts in ((QUERIES[0], [LONG_PASSAGE, PASSAGES[1]]), (long_query, PASSAGES[:3])):
        expected = np.array(reference.score(query, texts))
        np.testing.assert_allclose(backend.score(query, texts), expected, atol=1e-4, rtol=0)


def test_int8_scores_equal_the_onnx_int8_variant(
    spread_model: Path, artifacts: dict[str, Any]
) -> None:
    """The same artifact, so the same scores as ``precision="int8", runtime="onnx"``; whether
    int8 ranks as fp32 is the fidelity gate's question, asked of a trained model (below):
    a random tiny model's scores differ by less than int8's rounding."""
    backend = lite(artifacts["int8"])
    same_artifact = torch_backend(
        spread_model, precision="int8", runtime="onnx", cache_dir=artifacts["cache"]
    )
    for query in QUERIES:
        expected = same_artifact.score(query, PASSAGES)
        np.testing.assert_allclose(backend.score(query, PASSAGES), expected, atol=1e-5)


def test_pairs_of_different_queries_score_as_their_own_calls(artifacts: dict[str, Any]) -> None:
    backend = lite(artifacts["fp32"])
    queries = [QUERIES[i % len(QUERIES)] for i in range(len(PASSAGES))]
    mixed = backend.score_pairs(queries, PASSAGES)
    alone = [backend.score(query, [text])[0] for query, text in zip(queries, PASSAGES, strict=True)]
    np.testing.assert_allclose(mixed, alone, atol=1e-5)
    assert backend.score(QUERIES[0], []) == []
    with pytest.raises(ConfigurationError, match="differ in length"):
        backend.score_pairs(QUERIES, PASSAGES)


def test_async_scores_equal_sync(artifacts: dict[str, Any]) -> None:
    backend = lite(artifacts["int8"])
    assert asyncio.run(backend.ascore(QUERIES[0], PASSAGES)) == backend.score(QUERIES[0], PASSAGES)


def test_long_passages_are_windowed_as_in_the_torch_backend(
    spread_model: Path, artifacts: dict[str, Any]
) -> None:
    backend = lite(artifacts["fp32"])
    reference = torch_backend(spread_model)
    assert backend.token_spans(LONG_PASSAGE) == reference.token_spans(LONG_PASSAGE)
    for query in (QUERIES[0], " ".join(PASSAGES)):  # a short query, and one longer than the input
        assert backend.window_token_budget(query) == reference.window_token_budget(query)
    candidates = [Candidate(LONG_PASSAGE, id="long"), Candidate(PASSAGES[1], id="short")]
    lite_result = Reranker(backend, normalization="none").rerank(QUERIES[0], candidates)
    torch_result = Reranker(reference, normalization="none").rerank(QUERIES[0], candidates)
    assert lite_result.report.windows_scored > 3
    assert lite_result.report.windows_scored == torch_result.report.windows_scored
    assert [item.id for item in lite_result] == [item.id for item in torch_result]
    lite_scores = [item.raw_score for item in lite_result]
    np.testing.assert_allclose(lite_scores, [item.raw_score for item in torch_result], atol=1e-4)


def test_it_runs_in_a_process_where_torch_cannot_be_imported(artifacts: dict[str, Any]) -> None:
    """What a `pip install crossrank[onnx-lite]` machine has: no torch, transformers, s-t."""
    script = textwrap.dedent(
        """
        import json, sys

        class NotInstalled:
            blocked = ("torch", "transformers", "sentence_transformers")

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.blocked:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NotInstalled())
        from crossrank.backends.onnx_lite import OnnxLiteBackend

        backend = OnnxLiteBackend(sys.argv[1])
        scores = backend.score(sys.argv[2], json.loads(sys.argv[3]))
        heavy = sorted(
            name for name in sys.modules
            if name.split(".")[0] in NotInstalled.blocked
            or name.startswith("crossrank.backends.local")
        )
        print(json.dumps({"scores": scores, "heavy": heavy}))
        """
    )
    folder = artifacts["int8"]
    completed = subprocess.run(
        [sys.executable, "-c", script, str(folder), QUERIES[0], json.dumps(PASSAGES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    expected = lite(folder).score(QUERIES[0], PASSAGES)
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-6)


def test_pickles_and_copies_open_the_session_lazily(artifacts: dict[str, Any]) -> None:
    backend = OnnxLiteBackend(artifacts["int8"], batch_size=4)
    expected = backend.score(QUERIES[1], PASSAGES)
    for clone in (pickle.loads(pickle.dumps(backend)), copy.deepcopy(backend)):
        assert clone._loaded is None
        assert clone.batch_size == 4 and clone.model == backend.model
        assert clone.score(QUERIES[1], PASSAGES) == expected
        assert clone.load().session is backend.load().session, "shared through the registry"


def test_by_name_in_a_reranker(artifacts: dict[str, Any]) -> None:
    backend = create_backend("onnx-lite", model=str(artifacts["int8"] / MODEL_FILE))
    assert isinstance(backend, OnnxLiteBackend) and backend.model == str(artifacts["int8"])
    reranker = Reranker("onnx-lite", model=str(artifacts["int8"]), top_n=2)
    result = reranker.rerank(QUERIES[0], PASSAGES)
    assert len(result) == 2 and result.report.backend == "onnx-lite"


def test_an_artifact_built_by_optimize_loads_beside_its_model_folder(
    spread_model: Path, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """`crossrank optimize` writes model.onnx and manifest.json only; the manifest names the
    local model folder, whose tokenizer.json and json settings then serve."""
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in (MODEL_FILE, MANIFEST_FILE):
        shutil.copy(artifacts["fp32"] / name, folder / name)
    backend = lite(folder)
    settings = backend.load().files.settings
    assert backend.load().files.tokenizer_file == spread_model / TOKENIZER_FILE
    assert (settings.max_length, settings.pad_id, settings.num_labels) == (128, 0, 1)
    np.testing.assert_allclose(
        backend.score(QUERIES[0], PASSAGES), lite(artifacts["fp32"]).score(QUERIES[0], PASSAGES)
    )


@pytest.mark.slow
def test_the_int8_artifact_crossrank_optimize_prints_serves_as_is(
    spread_model: Path, tmp_path: Path, capsys: Any
) -> None:
    from crossrank.cli import main

    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps([[QUERIES[0], PASSAGES[:6]]]), encoding="utf-8")
    output = tmp_path / "optimized"
    arguments = ["optimize", str(spread_model), "--output", str(output), "--no-compile"]
    assert main([*arguments, "--fidelity-sample", str(sample)]) == 0
    built = (output / "onnx").glob("*/model.onnx")
    (int8,) = [path for path in built if path.parent.name.split("-")[-2] == "dynamic"]
    assert str(int8) in capsys.readouterr().out
    scores = lite(int8).score(QUERIES[0], PASSAGES)
    onnx_int8 = torch_backend(spread_model, precision="int8", runtime="onnx", cache_dir=output)
    np.testing.assert_allclose(scores, onnx_int8.score(QUERIES[0], PASSAGES), atol=1e-5)


def test_a_folder_that_is_not_an_artifact_is_named(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigurationError, match="does not exist") as raised:
        lite(missing).score(QUERIES[0], PASSAGES)
    assert str(missing) in str(raised.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match=f"missing file: '{empty / MODEL_FILE}'"):
        lite(empty).score(QUERIES[0], PASSAGES)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(artifacts["fp32"] / MODEL_FILE, no_tokenizer / MODEL_FILE)
    named = f"missing file: '{no_tokenizer / TOKENIZER_FILE}'"
    with pytest.raises(ConfigurationError, match=named):
        lite(no_tokenizer).score(QUERIES[0], PASSAGES)
    broken = tmp_path / "broken-settings"
    shutil.copytree(artifacts["fp32"], broken)
    (broken / SETTINGS_FILE).write_text('{"format": 1, "pad_id": 0}', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=SETTINGS_FILE):
        lite(broken).score(QUERIES[0], PASSAGES)


@pytest.mark.parametrize(
    ("option", "value"),
    [("batch_size", 0), ("token_budget", -5), ("num_threads", 1.5), ("max_length", True)],
)
def test_bad_options_are_named(artifacts: dict[str, Any], option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"{option} must be a positive integer"):
        OnnxLiteBackend(artifacts["fp32"], **{option: value})
    with pytest.raises(ConfigurationError, match="label_index"):
        OnnxLiteBackend(artifacts["fp32"], label_index="relevant")


def test_a_reranker_on_a_missing_artifact_keeps_first_stage_order_unless_strict(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "not-built"
    result = Reranker("onnx-lite", model=str(missing)).rerank(QUERIES[0], PASSAGES[:3])
    assert result.report.status == "fallback" and str(missing) in (result.report.error or "")
    assert [item.text for item in result] == PASSAGES[:3]
    with pytest.raises(ConfigurationError, match="does not exist"):
        Reranker("onnx-lite", model=str(missing), strict=True).rerank(QUERIES[0], PASSAGES[:3])
