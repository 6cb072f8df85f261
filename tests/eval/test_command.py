"""``crossrank eval`` and ``crossrank tune-selective`` end to end on a tiny BEIR folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossrank import Reranker
from crossrank.cli import main
from crossrank.eval.beir import load_beir

pytest.importorskip("bm25s")
pytest.importorskip("ranx")

TOPICS = {
    "cats": "cats purr and chase mice around the house",
    "dogs": "dogs bark and fetch sticks in the park",
    "fish": "fish swim in rivers lakes and the sea",
    "birds": "birds fly south for the winter and sing",
    "trees": "trees grow leaves in spring and drop them in autumn",
}


def write_beir(root: Path) -> Path:
    corpus = []
    for topic, sentence in TOPICS.items():
        for variant in range(4):
            corpus.append(
                {"_id": f"{topic}-{variant}", "title": f"{topic} note {variant}", "text": sentence}
            )
    queries = [{"_id": topic, "text": f"what do {topic} do"} for topic in TOPICS]
    queries.append({"_id": "unjudged", "text": "nothing judged here"})
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(row) for row in corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(row) for row in queries) + "\n")
    rows = ["query-id\tcorpus-id\tscore"]
    rows += [
        f"{topic}\t{topic}-{variant}\t{1 + variant % 2}" for topic in TOPICS for variant in range(2)
    ]
    rows.append("cats\tdogs-0\t0")
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def beir_folder(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


def test_loader_skips_zero_relevance_and_unjudged(beir_folder: Path) -> None:
    collection = load_beir(beir_folder)
    assert len(collection.corpus) == 20
    assert collection.judged_query_ids == list(TOPICS)
    assert "dogs-0" not in collection.qrels["cats"]


@pytest.mark.slow
def test_eval_end_to_end(
    beir_folder: Path, tmp_path: Path, tiny_cross_encoder_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "eval.json"
    plot = tmp_path / "eval.png"
    code = main(
        [
            "eval",
            "--data",
            str(beir_folder),
            "--first-stage",
            "bm25",
            "--depth",
            "6",
            "--top-k",
            "10",
            "--backend",
            "cross-encoder",
            "--model",
            str(tiny_cross_encoder_path),
            "--selective",
            "margin:0.5",
            "--selective",
            "never",
            "--blend",
            "rrf:60",
            "--compare",
            "--calibrate",
            "platt",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--quiet",
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert document["dataset"] == "tiny"
    names = [run["name"] for run in document["runs"]]
    assert names == [
        "first-stage",
        "reranked",
        "selective:margin:0.5:2",
        "selective:never",
        "blend:rrf:60:0.5",
    ]
    for run in document["runs"]:
        for key in (
            "ndcg@10",
            "mrr@10",
            "recall@100",
            "skip_rate",
            "p50_ms",
            "p95_ms",
            "pairs_scored",
        ):
            assert key in run
        assert run["queries"] == 5
    by_name = {run["name"]: run for run in document["runs"]}
    # Never-rerank is the first stage, exactly, and scores nothing.
    assert by_name["selective:never"]["ndcg@10"] == by_name["first-stage"]["ndcg@10"]
    assert by_name["selective:never"]["pairs_scored"] == 0
    assert by_name["selective:never"]["skip_rate"] == 1.0
    assert by_name["reranked"]["skip_rate"] == 0.0
    # BM25 leaves out documents sharing no term, so a query may have fewer than 6.
    assert 0 < by_name["reranked"]["pairs_scored"] <= 5 * 6
    assert by_name["selective:margin:0.5:2"]["pairs_scored"] <= by_name["reranked"]["pairs_scored"]
    assert {row["segment"] for row in document["compare"]} >= {"all"}
    assert 0.0 <= document["calibration"]["ece_calibrated"] <= 1.0
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "first-stage" in printed and "blend:rrf:60:0.5" in printed


@pytest.mark.slow
def test_tune_selective_writes_a_loadable_config(
    beir_folder: Path, tmp_path: Path, tiny_cross_encoder_path: Path
) -> None:
    out = tmp_path / "chosen.json"
    code = main(
        [
            "tune-selective",
            "--data",
            str(beir_folder),
            "--depth",
            "6",
            "--backend",
            "cross-encoder",
            "--model",
            str(tiny_cross_encoder_path),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    config = json.loads(out.read_text())
    reranker = Reranker.from_config(config)
    assert reranker.to_config() == config
    assert config["backend"] == "cross-encoder"


def test_eval_without_backend_reports_first_stage_only(beir_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bm25.json"
    assert (
        main(["eval", "--data", str(beir_folder), "--depth", "5", "--json", str(out), "--quiet"])
        == 0
    )
    runs = json.loads(out.read_text())["runs"]
    assert [run["name"] for run in runs] == ["first-stage"]
    assert runs[0]["ndcg@10"] > 0.5  # the topic words make BM25 nearly perfect here


def test_eval_top_k_adds_metrics_at_that_cut_off(beir_folder: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "top3.json"
    argv = ["eval", "--data", str(beir_folder), "--depth", "5", "--quiet"]
    assert main([*argv, "--top-k", "3", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    (run,) = document["runs"]
    assert document["top_k"] == 3
    for key in ("ndcg@10", "recall@100", "ndcg@3", "mrr@3", "recall@3"):
        assert key in run
    # Each topic has two judged documents, so three passages can hold at most both of them.
    assert run["recall@3"] <= run["recall@10"]
    header = capsys.readouterr().out.splitlines()[1]
    assert "ndcg@3" in header and "recall@3" in header
    with pytest.raises(SystemExit, match="--top-k must be >= 1, got 0"):
        main([*argv, "--top-k", "0"])


def test_eval_rejects_selective_without_backend(beir_folder: Path) -> None:
    with pytest.raises(SystemExit, match="need --backend"):
        main(["eval", "--data", str(beir_folder), "--selective", "margin:0.3", "--quiet"])
