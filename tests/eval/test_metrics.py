"""ranx-based metrics cross-checked against ir-measures and a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossrank.eval.metrics import mean_metrics, paired_tests, per_query_metrics


def test_hand_computed_graded_ndcg_uses_exponential_gain() -> None:
    qrels = {"q": {"a": 2, "b": 1}}
    rankings = {"q": ["x", "b", "a"]}
    dcg = (2**1 - 1) / math.log2(3) + (2**2 - 1) / math.log2(4)
    ideal = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    values = per_query_metrics(qrels, rankings)
    assert values["ndcg@10"]["q"] == pytest.approx(dcg / ideal)
    assert values["mrr@10"]["q"] == pytest.approx(0.5)
    assert values["recall@10"]["q"] == pytest.approx(1.0)


def test_ranx_agrees_with_ir_measures_on_a_random_binary_run() -> None:
    ir_measures = pytest.importorskip("ir_measures")
    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{q}": {d: 1 for d in rng.choice(docs, size=5, replace=False)} for q in range(12)}
    rankings = {q: list(rng.permutation(docs)[:40]) for q in qrels}
    ours = per_query_metrics(qrels, rankings)
    reference_qrels = [
        ir_measures.Qrel(q, d, r) for q, judged in qrels.items() for d, r in judged.items()
    ]
    reference_run = [
        ir_measures.ScoredDoc(q, d, float(len(ranking) - i))
        for q, ranking in rankings.items()
        for i, d in enumerate(ranking)
    ]
    measures = {
        "ndcg@10": ir_measures.nDCG @ 10,
        "mrr@10": ir_measures.RR @ 10,
        "recall@10": ir_measures.R @ 10,
        "recall@100": ir_measures.R @ 100,
    }
    cutoffs = {"ndcg@3": ir_measures.nDCG @ 3, "mrr@5": ir_measures.RR @ 5}
    ours |= per_query_metrics(qrels, rankings, list(cutoffs))
    measures |= cutoffs
    for name, measure in measures.items():
        expected = {
            m.query_id: m.value
            for m in ir_measures.iter_calc([measure], reference_qrels, reference_run)
        }
        for query_id, value in ours[name].items():
            assert value == pytest.approx(expected[query_id], abs=1e-9), (name, query_id)
    assert set(mean_metrics(ours)) == set(measures)


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@0", "map@10", "recall@ten", "ndcg@-1"])
def test_unknown_metric_names_are_rejected_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("'", "")):
        per_query_metrics({"q": {"a": 1}}, {"q": ["a"]}, [bad])


def test_a_repeated_metric_is_computed_once_and_reported_under_its_name() -> None:
    values = per_query_metrics({"q": {"a": 1}}, {"q": ["x", "a"]}, ["mrr@10", "mrr@10"])
    assert values == {"mrr@10": {"q": 0.5}}


def test_empty_ranking_scores_zero_and_unjudged_queries_are_rejected() -> None:
    values = per_query_metrics({"q": {"a": 1}, "r": {"b": 1}}, {"q": [], "r": ["b"]})
    assert values["ndcg@10"] == {"q": 0.0, "r": 1.0}
    with pytest.raises(ValueError, match="without relevance judgments"):
        per_query_metrics({"q": {"a": 1}}, {"z": ["a"]})


def test_paired_tests_separate_real_and_null_differences() -> None:
    rng = np.random.default_rng(0)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(50))}
    better = {q: v + 0.2 for q, v in base.items()}
    noisy = {q: v + float(rng.normal(0, 0.05)) for q, v in base.items()}
    strong = paired_tests(base, better)
    assert strong["mean_difference"] == pytest.approx(0.2)
    assert strong["p_randomization"] < 0.01 and strong["p_ttest"] < 0.01
    assert paired_tests(base, noisy)["p_randomization"] > 0.05
