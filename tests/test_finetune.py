"""crossrank.finetune: query splits, negative mining, pair building, and a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.eval.beir import load_beir
from crossrank.finetune.miners import BM25Miner
from crossrank.finetune.pairs import (
    PairStats,
    build_lists,
    build_pairs,
    merge_candidate_lists,
    mine_negatives,
    split_queries,
)

# A tiny collection about three topics. Every query shares terms with judged and unjudged
# documents alike, so BM25 ranks judged positives high and mining must actively drop them.
DOCUMENTS = {
    "d1": ("Refund policy", "refunds for physical goods are issued within fourteen days"),
    "d2": ("Digital refunds", "refunds for digital downloads before the file is opened"),
    "d3": ("Refund fees", "a restocking fee applies to refunds of opened goods"),
    "d4": ("Shipping times", "shipping to europe takes five to seven business days"),
    "d5": ("Express shipping", "express shipping to europe arrives in two business days"),
    "d6": ("Shipping costs", "shipping costs depend on weight and destination"),
    "d7": ("Password reset", "to reset your password open settings and choose security"),
    "d8": ("Account security", "two factor security protects your account password"),
    "d9": ("Locked account", "a locked account needs a password reset by support"),
    "d10": ("Warranty", "the warranty covers manufacturing defects for two years"),
    "d11": ("Warranty claims", "warranty claims need the receipt and the serial number"),
    "d12": ("Capital cities", "berlin is the capital of germany and paris of france"),
    "d13": ("Damaged parcels", "parcels with defects from transport damage can be returned"),
}
QUERIES = {
    "q1": "how do refunds work for goods",
    "q2": "shipping to europe business days",
    "q3": "reset account password security",
    "q4": "warranty claims for defects",
    "q5": "refunds for digital downloads",
    "q6": "how do refunds work for goods",  # same text as q1 under another id
    "q7": "express shipping costs",
    "q8": "unjudged query about capitals",
}
QRELS = [
    ("q1", "d1", 2),
    ("q1", "d3", 1),
    ("q2", "d4", 1),
    ("q2", "d5", 1),
    ("q3", "d7", 2),
    ("q3", "d9", 1),
    ("q4", "d10", 1),
    ("q4", "d11", 2),
    ("q5", "d2", 1),
    ("q6", "d1", 1),
    ("q7", "d5", 1),
    ("q7", "d6", 2),
]


def write_collection(root: Path, name: str = "tinykb") -> Path:
    folder = root / name
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, (title, text) in DOCUMENTS.items():
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in QUERIES.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in QRELS]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def collection_dir(tmp_path: Path) -> Path:
    return write_collection(tmp_path)


@pytest.fixture
def collection(collection_dir: Path):  # type: ignore[no-untyped-def]
    return load_beir(collection_dir)


# -- query splits -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_split_partitions_judged_queries_and_keeps_identical_texts_together(collection, seed):
    split = split_queries(collection, heldout_fraction=0.3, seed=seed)
    train, heldout = set(split.train_query_ids), set(split.heldout_query_ids)
    assert not train & heldout
    assert train | heldout == set(collection.judged_query_ids)
    assert "q8" not in train | heldout  # no judgments, nothing to learn or measure
    assert heldout and train
    # q1 and q6 have the same text: wherever one goes, the other goes too.
    assert ("q1" in heldout) == ("q6" in heldout)
    train_texts = {collection.queries[query_id].lower() for query_id in train}
    assert not any(collection.queries[query_id].lower() in train_texts for query_id in heldout)


def test_split_is_reproducible_and_depends_on_the_seed(collection):
    first = split_queries(collection, heldout_fraction=0.5, seed=3)
    assert first == split_queries(collection, heldout_fraction=0.5, seed=3)
    seen = {
        split_queries(collection, heldout_fraction=0.5, seed=s).heldout_query_ids for s in range(8)
    }
    assert len(seen) > 1


def test_split_without_heldout_trains_on_everything(collection):
    split = split_queries(collection, heldout_fraction=0.0, seed=0)
    assert split.heldout_query_ids == ()
    assert list(split.train_query_ids) == collection.judged_query_ids


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_rejects_bad_fractions(collection, fraction):
    with pytest.raises(ConfigurationError, match=str(fraction)):
        split_queries(collection, heldout_fraction=fraction, seed=0)


def test_split_needs_two_distinct_queries_to_hold_one_out(tmp_path):
    folder = write_collection(tmp_path)
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\nq6\td1\t1\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="tinykb"):
        split_queries(load_beir(folder), heldout_fraction=0.5, seed=0)


# -- negative mining ----------------------------------------------------------------------


def test_merge_interleaves_rankings_without_repeats():
    assert merge_candidate_lists([["a", "b", "c"], ["b", "d"]]) == ["a", "b", "d", "c"]
    assert merge_candidate_lists([]) == []


def test_bm25_ranks_judged_positives_high_but_mining_excludes_them(collection):
    bm25 = BM25Miner(collection)
    query_ids = collection.judged_query_ids
    # Precondition that makes the test meaningful: BM25 does retrieve judged positives.
    top = {query_id: bm25.candidates(collection.queries[query_id], k=5) for query_id in query_ids}
    assert all(set(top[q]) & set(collection.qrels[q]) for q in query_ids)
    negatives = mine_negatives(collection, query_ids, [bm25], depth=5)
    for query_id in query_ids:
        assert negatives[query_id], query_id
        assert not set(negatives[query_id]) & set(collection.qrels[query_id])
        # Hard negatives come from the first stage: each shares a term with the query.
        assert set(negatives[query_id]) <= set(bm25.candidates(collection.queries[query_id], k=50))
        assert len(negatives[query_id]) <= 5


def test_mining_merges_several_miners_and_still_drops_positives(collection):
    class Everything:
        """A miner that returns every document, positives first (the worst case)."""

        def candidates(self, query: str, *, k: int) -> list[str]:
            return sorted(collection.corpus, key=lambda doc_id: doc_id != "d1")[:k]

    negatives = mine_negatives(collection, ["q1"], [BM25Miner(collection), Everything()], depth=4)
    assert negatives["q1"] and "d1" not in negatives["q1"] and "d3" not in negatives["q1"]
    assert len(negatives["q1"]) == len(set(negatives["q1"]))


def test_mining_rejects_bad_depth(collection):
    with pytest.raises(ConfigurationError, match="0"):
        mine_negatives(collection, ["q1"], [BM25Miner(collection)], depth=0)


# -- pairs and lists ----------------------------------------------------------------------


def test_pairs_hold_judged_positives_and_mined_negatives_of_training_queries_only(collection):
    split = split_queries(collection, heldout_fraction=0.3, seed=5)
    bm25 = BM25Miner(collection)
    negatives = mine_negatives(collection, split.train_query_ids, [bm25], depth=6)
    stats = PairStats()
    pairs = build_pairs(
        collection,
        split.train_query_ids,
        negatives,
        max_positives_per_query=1,
        negatives_per_positive=2,
        seed=5,
        stats=stats,
    )
    assert {pair.query_id for pair in pairs} == set(split.train_query_ids)
    heldout_texts = {collection.queries[query_id] for query_id in split.heldout_query_ids}
    assert not any(pair.query in heldout_texts for pair in pairs)
    for pair in pairs:
        judged = collection.qrels[pair.query_id]
        assert (pair.label == 1.0) == (pair.doc_id in judged)
        assert pair.text == collection.corpus[pair.doc_id].full_text
        assert pair.query == collection.queries[pair.query_id]
    per_query: dict[str, list[float]] = {}
    for pair in pairs:
        per_query.setdefault(pair.query_id, []).append(pair.label)
    for labels in per_query.values():
        assert labels.count(1.0) == 1 and 1 <= labels.count(0.0) <= 2
    assert stats.positives == sum(pair.label == 1.0 for pair in pairs)
    assert stats.negatives == sum(pair.label == 0.0 for pair in pairs)
    again = build_pairs(
        collection,
        split.train_query_ids,
        negatives,
        max_positives_per_query=1,
        negatives_per_positive=2,
        seed=5,
    )
    assert again == pairs


def test_pairs_skip_judged_documents_missing_from_the_corpus(tmp_path):
    folder = write_collection(tmp_path)
    with (folder / "qrels" / "test.tsv").open("a", encoding="utf-8") as handle:
        handle.write("q4\tghost\t1\n")
    collection = load_beir(folder)
    stats = PairStats()
    negatives = mine_negatives(collection, ["q4"], [BM25Miner(collection)], depth=5)
    pairs = build_pairs(
        collection,
        ["q4"],
        negatives,
        max_positives_per_query=10,
        negatives_per_positive=1,
        seed=0,
        stats=stats,
    )
    assert "ghost" not in {pair.doc_id for pair in pairs}
    assert stats.missing_documents == 1
    assert {pair.doc_id for pair in pairs if pair.label == 1.0} == {"d10", "d11"}


def test_lists_put_the_graded_positive_first_and_mined_negatives_after(collection):
    negatives = mine_negatives(collection, ["q3", "q4"], [BM25Miner(collection)], depth=6)
    lists = build_lists(
        collection,
        ["q3", "q4"],
        negatives,
        max_positives_per_query=5,
        negatives_per_positive=3,
        seed=1,
    )
    assert len(lists) == 4  # one list per judged positive
    for item in lists:
        judged = collection.qrels[item.query_id]
        assert item.labels[0] == float(judged[item.doc_ids[0]])
        assert all(label == 0.0 for label in item.labels[1:])
        assert not set(item.doc_ids[1:]) & set(judged)
        assert len(item.doc_ids) == len(item.texts) == len(item.labels)


@pytest.mark.parametrize(
    ("positives", "negatives"), [(0, 1), (1, 0)], ids=["no-positives", "no-negatives"]
)
def test_pair_counts_must_be_positive(collection, positives, negatives):
    with pytest.raises(ConfigurationError, match="must be a positive integer"):
        build_pairs(
            collection,
            ["q1"],
            {"q1": ["d2"]},
            max_positives_per_query=positives,
            negatives_per_positive=negatives,
            seed=0,
        )


# -- training -----------------------------------------------------------------------------


def _train_tiny(collection, model_path: Path, out_dir: Path, *, loss: str = "bce", seed: int = 0):  # type: ignore[no-untyped-def]
    from crossrank.finetune.train import (
        TrainingConfig,
        load_base_model,
        save_model,
        train_cross_encoder,
    )

    split = split_queries(collection, heldout_fraction=0.3, seed=seed)
    negatives = mine_negatives(collection, split.train_query_ids, [BM25Miner(collection)], depth=5)
    build = build_lists if loss != "bce" else build_pairs
    examples = build(
        collection,
        split.train_query_ids,
        negatives,
        max_positives_per_query=2,
        negatives_per_positive=2,
        seed=seed,
    )
    config = TrainingConfig(
        base_model=str(model_path),
        loss=loss,
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        max_length=64,
        seed=seed,
        device="cpu",
        progress=False,
    )
    model = load_base_model(config)
    outcome = train_cross_encoder(model, examples, config)
    save_model(model, out_dir)
    return outcome


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_trained(tiny_cross_encoder_path, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One two-step BCE run of the tiny cross-encoder (seed 3), shared by the tests below."""
    collection = load_beir(write_collection(tmp_path_factory.mktemp("collection")))
    out_dir = tmp_path_factory.mktemp("tuned") / "model"
    outcome = _train_tiny(collection, tiny_cross_encoder_path, out_dir, seed=3)
    return collection, out_dir, outcome


def test_two_step_training_saves_a_model_crossrank_reloads_and_scores(
    tiny_trained, tiny_cross_encoder_path
):
    import torch

    from crossrank import Reranker

    _collection, out_dir, outcome = tiny_trained
    assert outcome.steps == 2
    assert outcome.final_loss is not None

    before, after = _weights(tiny_cross_encoder_path), _weights(out_dir)
    shared = set(before) & set(after)
    assert shared
    assert any(not torch.equal(before[name], after[name]) for name in shared)

    reranker = Reranker("cross-encoder", model=str(out_dir), normalization="none", strict=True)
    documents = [text for _title, text in DOCUMENTS.values()][:5]
    result = reranker.rerank("refunds for goods", documents)
    assert sorted(result.texts) == sorted(documents)
    assert result.report.status == "reranked"
    assert all(isinstance(score, float) for score in result.scores)
    assert len(set(result.scores)) > 1


def test_training_is_reproducible_with_a_fixed_seed(
    tiny_trained, tiny_cross_encoder_path, tmp_path
):
    import torch

    collection, first_dir, _outcome = tiny_trained
    _train_tiny(collection, tiny_cross_encoder_path, tmp_path / "again", seed=3)
    first, second = _weights(first_dir), _weights(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_listwise_loss_trains_on_graded_lists(collection, tiny_cross_encoder_path, tmp_path):
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from crossrank.registry import ModelRegistry

    outcome = _train_tiny(collection, tiny_cross_encoder_path, tmp_path / "lambda", loss="lambda")
    assert outcome.steps == 2
    backend = CrossEncoderBackend(str(tmp_path / "lambda"), device="cpu", registry=ModelRegistry())
    assert len(backend.score("password reset", ["reset your password", "warranty"])) == 2


def test_unknown_loss_is_named_in_the_error():
    from crossrank.finetune.train import TrainingConfig

    with pytest.raises(ConfigurationError, match="'hinge'"):
        TrainingConfig(loss="hinge")


# -- the command --------------------------------------------------------------------------


def test_cli_finetune_trains_saves_and_reports_heldout_scores(
    collection_dir, tiny_cross_encoder_path, tmp_path, capsys
):
    from crossrank.cli import main

    out_dir = tmp_path / "cli-model"
    code = main(
        [
            "finetune",
            "--data",
            str(collection_dir),
            "--base",
            str(tiny_cross_encoder_path),
            "--out",
            str(out_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--heldout-fraction",
            "0.3",
            "--rerank-depth",
            "10",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "nDCG@10 on held-out queries" in printed
    assert "tinykb" in printed
    assert (out_dir / "config.json").is_file()

    record = json.loads((out_dir / "crossrank_finetune.json").read_text())
    (split,) = record["splits"]
    assert split["collection"] == "tinykb"
    assert set(split["heldout_query_ids"]).isdisjoint(split["train_query_ids"])
    (scores,) = record["heldout_ndcg@10"]
    assert scores["queries"] == len(split["heldout_query_ids"])
    assert 0.0 <= scores["bm25"] <= 1.0 and 0.0 <= scores["finetuned"] <= 1.0
    assert scores["base"] is not None
    assert scores["blend"] == "weighted:0.5"
    assert 0.0 <= scores["blended"] <= 1.0
    assert "Reranker(blend='weighted:0.5')" in printed


def test_cli_rejects_a_missing_data_folder(tmp_path, tiny_cross_encoder_path):
    from crossrank.cli import main

    with pytest.raises(InvalidInputError, match="nowhere"):
        main(
            [
                "finetune",
                "--data",
                str(tmp_path / "nowhere"),
                "--base",
                str(tiny_cross_encoder_path),
                "--out",
                str(tmp_path / "out"),
            ]
        )


def test_cli_rejects_the_same_collection_twice(collection_dir, tiny_cross_encoder_path, tmp_path):
    from crossrank.cli import main

    with pytest.raises(ConfigurationError, match="tinykb"):
        main(
            [
                "finetune",
                "--data",
                str(collection_dir),
                "--data",
                str(collection_dir),
                "--base",
                str(tiny_cross_encoder_path),
                "--out",
                str(tmp_path / "out"),
            ]
        )


@pytest.mark.slow
def test_minilm_base_gets_a_fresh_one_logit_head_and_trains(collection, minilm_path, tmp_path):
    from crossrank.finetune.train import EMBEDDED_BASE, resolve_base_model

    assert Path(resolve_base_model(EMBEDDED_BASE)) == minilm_path
    outcome = _train_tiny(collection, minilm_path, tmp_path / "minilm")
    assert outcome.steps == 2
    config = json.loads((tmp_path / "minilm" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1
    assert "classifier.weight" in _weights(tmp_path / "minilm")


@pytest.mark.slow
def test_dense_miner_adds_topical_negatives_and_still_drops_positives(collection, minilm_path):
    from crossrank.finetune.miners import DenseMiner

    dense = DenseMiner(collection, device="cpu")
    ranked = dense.candidates(collection.queries["q3"], k=len(collection.corpus))
    assert sorted(ranked) == sorted(collection.corpus)
    assert ranked[0] in {"d7", "d8", "d9"}  # the account/password documents come first
    negatives = mine_negatives(collection, ["q3"], [BM25Miner(collection), dense], depth=4)
    assert negatives["q3"] and not set(negatives["q3"]) & {"d7", "d9"}


def test_heldout_scorer_scores_as_reranker_does_windows_included(tiny_cross_encoder_path):
    from crossrank import Reranker
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from crossrank.finetune.evaluate import RerankerScorer
    from crossrank.registry import ModelRegistry
    from crossrank.windows import plan_windows

    backend = CrossEncoderBackend(
        str(tiny_cross_encoder_path), max_length=16, registry=ModelRegistry()
    )
    query = "cats purr"
    long_text = "dogs bark in the park all day long " * 6 + "cats purr and chase mice"
    texts = ["cats purr", long_text, "fish swim", "cats purr"]  # a duplicate keeps its score
    windowed = RerankerScorer(backend, windowing=True).score(query, texts)
    expected_reranker = Reranker(backend, normalization="raw", deduplicate=False)
    expected = expected_reranker.rerank(query, texts)
    assert windowed == [item.raw_score for item in sorted(expected, key=lambda i: i.input_index)]
    first_window = RerankerScorer(backend, windowing=False).score(query, texts)
    assert first_window == pytest.approx(backend.score(query, texts), abs=1e-6)
    # The long text's score is its best window's, whichever window that is for this model.
    plan = plan_windows(query, texts, backend, stride=expected_reranker.window_stride)
    long_windows = [
        text for text, owner in zip(plan.window_texts, plan.owners, strict=True) if owner == 1
    ]
    assert len(long_windows) > 1, "the long text should not fit one window"
    assert windowed[1] == pytest.approx(max(backend.score(query, long_windows)), abs=1e-6)
    assert expected.report.windows_scored == len(plan.window_texts)
    assert windowed[0] == pytest.approx(windowed[3], abs=1e-6)


def test_heldout_scorer_fails_loudly_instead_of_scoring_the_first_stage(tmp_path):
    from crossrank.errors import CrossrankError
    from crossrank.finetune.evaluate import model_scorer

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CrossrankError, match=str(tmp_path)):
        model_scorer(str(tmp_path)).score("q", ["a", "b"])


def test_blended_run_fuses_bm25_and_model_scores_as_the_reranker_blend_does(collection):
    from crossrank.blend import parse_blend
    from crossrank.finetune.evaluate import FirstStageRun, blended_run

    first_stage = FirstStageRun(
        collection=collection, hits={"q": [("d1", 9.0), ("d2", 5.0), ("d3", 1.0)]}
    )
    model = {"q": {"d1": -2.0, "d2": 0.0, "d3": 4.0}}  # the reverse of BM25's order

    def order(spec: str) -> list[str]:
        blend = parse_blend(spec)
        assert blend is not None
        run = blended_run(first_stage, model, blend)
        return sorted(run["q"], key=run["q"].__getitem__, reverse=True)

    assert order("weighted:0") == ["d1", "d2", "d3"]
    assert order("weighted:1") == ["d3", "d2", "d1"]
    # min-max: BM25 (1, .5, 0), model (0, 1/3, 1); at w=0.75 d3 = .75, d2 = .375, d1 = .25
    run = blended_run(first_stage, model, parse_blend("weighted:0.75"))  # type: ignore[arg-type]
    assert run["q"] == pytest.approx({"d1": 0.25, "d2": 0.375, "d3": 0.75})


def test_an_unknown_evaluation_blend_is_named_in_the_error():
    from crossrank.finetune.pipeline import DataConfig

    with pytest.raises(ConfigurationError, match="weighted:7"):
        DataConfig(eval_blend="weighted:7")
    assert DataConfig(eval_blend=None).eval_blend is None
