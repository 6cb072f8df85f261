"""``crossrank batch`` in process: JSONL and Parquet, resuming by shard, BEIR folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossrank.cli import main
from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.serve.batch import read_rows, run_batch
from crossrank.serve.engine_options import build_reranker
from tests.serve.rows import KEYWORD, rows_of, write_jsonl


def test_batch_matches_the_engine_row_by_row(tmp_path: Path) -> None:
    rows = rows_of(5)
    summary = run_batch(rows, KEYWORD, tmp_path / "out.jsonl", shard_size=2, progress=False)
    assert (summary.rows, summary.shards, summary.shards_resumed) == (5, 3, 0)
    written = read_rows(tmp_path / "out.jsonl")
    reranker = build_reranker(KEYWORD)
    for position, (row, out) in enumerate(zip(rows, written, strict=True)):
        expected = reranker.rerank(
            row["query"], [c if isinstance(c, str) else c["text"] for c in row["candidates"]]
        )
        assert out["row"] == position and out["id"] == row["id"]
        assert [r["index"] for r in out["results"]] == [item.input_index for item in expected]


def test_cli_jsonl_and_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    # Parquet columns hold one type: every candidate is an object here.
    rows = [
        dict(row, candidates=[c if isinstance(c, dict) else {"text": c} for c in row["candidates"]])
        for row in rows_of(4)
    ]
    rows = [
        dict(
            row, candidates=[{"id": None, "first_stage_score": None} | c for c in row["candidates"]]
        )
        for row in rows
    ]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(KEYWORD), encoding="utf-8")
    assert (
        main(
            [
                "batch",
                str(source),
                "--out",
                str(tmp_path / "a.jsonl"),
                "--config",
                str(config),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "wrote 4 rows" in capsys.readouterr().out
    table = pyarrow.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "rows.parquet")
    out = tmp_path / "b.parquet"
    code = main(
        [
            "batch",
            str(tmp_path / "rows.parquet"),
            "--out",
            str(out),
            "--config",
            str(config),
            "--no-progress",
        ]
    )
    assert code == 0
    assert pq.read_table(out).to_pylist() == read_rows(tmp_path / "a.jsonl")


def test_resume_skips_finished_shards(tmp_path: Path) -> None:
    rows = rows_of(6)
    out = tmp_path / "out.jsonl"
    run_batch(rows, KEYWORD, out, shard_size=2, progress=False)
    shards = out.with_name("out.jsonl.shards")
    first = shards / "shard-000000.jsonl"
    kept = [dict(json.loads(line), resumed=True) for line in first.read_text().splitlines()]
    first.write_text("".join(json.dumps(row) + "\n" for row in kept))  # marks shard 0
    (shards / "shard-000002.jsonl").unlink()  # as if the run died during shard 2
    summary = run_batch(rows, KEYWORD, out, shard_size=2, progress=False)
    assert summary.shards_resumed == 2
    written = read_rows(out)
    assert [row["row"] for row in written] == list(range(6))
    assert [row.get("resumed", False) for row in written] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_resume_refuses_shards_of_another_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run_batch(rows_of(3), KEYWORD, out, shard_size=2, fingerprint={"sha256": "a"}, progress=False)
    with pytest.raises(ConfigurationError, match="--restart"):
        run_batch(
            rows_of(3), KEYWORD, out, shard_size=2, fingerprint={"sha256": "b"}, progress=False
        )
    run_batch(
        rows_of(3),
        KEYWORD,
        out,
        shard_size=2,
        fingerprint={"sha256": "b"},
        restart=True,
        progress=False,
    )


def test_bad_rows_are_named_before_any_work(tmp_path: Path) -> None:
    rows = rows_of(3)
    rows[2] = {"query": "q", "candidates": ["a", {"txt": "b"}]}
    with pytest.raises(InvalidInputError, match=r"row 2: candidates\[1\]"):
        run_batch(rows, KEYWORD, tmp_path / "out.jsonl", progress=False)


def test_beir_folder_first_stage_then_rerank(tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Paris", "text": "paris is the capital of france"},
        {"_id": "d2", "title": "Berlin", "text": "berlin is the capital of germany"},
        {"_id": "d3", "title": "Refunds", "text": "refunds are issued within fourteen days"},
    ]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(
        folder / "queries.jsonl",
        [{"_id": "q1", "text": "capital of france"}, {"_id": "q2", "text": "refunds"}],
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    out = tmp_path / "run.jsonl"
    assert (
        main(
            [
                "batch",
                str(folder),
                "--out",
                str(out),
                "--backend",
                KEYWORD["backend"],
                "--depth",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    written = read_rows(out)
    assert [row["id"] for row in written] == ["q1", "q2"]
    assert written[0]["results"][0]["id"] == "d1"
    assert all(len(row["results"]) <= 2 for row in written)
