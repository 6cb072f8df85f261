"""Selective policies: signals on hand-made candidate lists, parsing, engine integration."""

from __future__ import annotations

import math

import pytest

from crossrank import Candidate, Reranker
from crossrank.errors import InvalidInputError
from crossrank.fusion import reciprocal_rank_fusion
from crossrank.selective import (
    AgreementPolicy,
    AlwaysRerank,
    CombinedPolicy,
    EntropyPolicy,
    MarginPolicy,
    NeverRerank,
    parse_policy,
)


def scored(*scores: float) -> list[Candidate]:
    return [
        Candidate(text=f"doc {i}", id=str(i), first_stage_score=s) for i, s in enumerate(scores)
    ]


def test_margin_signal_is_normalized_gap_to_kth() -> None:
    candidates = scored(10.0, 6.0, 4.0, 0.0)
    assert MarginPolicy(threshold=0.5).signal("q", candidates) == pytest.approx(0.4)
    assert MarginPolicy(threshold=0.5, k=3).signal("q", candidates) == pytest.approx(0.6)
    # Scale-free: multiplying every score changes nothing.
    assert MarginPolicy(threshold=0.5).signal("q", scored(100.0, 60.0, 40.0, 0.0)) == pytest.approx(
        0.4
    )


def test_margin_decision_records_signal_and_threshold() -> None:
    candidates = scored(10.0, 6.0, 4.0, 0.0)
    skip = MarginPolicy(threshold=0.4).decide("q", candidates)
    run = MarginPolicy(threshold=0.41).decide("q", candidates)
    assert (skip.rerank, run.rerank) == (False, True)
    assert skip.signal == pytest.approx(0.4)
    assert skip.threshold == 0.4
    assert skip.policy == "margin:0.4:2"


def test_missing_scores_mean_rerank() -> None:
    decision = MarginPolicy(threshold=0.0).decide("q", [Candidate("a"), Candidate("b")])
    assert decision.rerank is True
    assert decision.signal is None
    assert "no signal" in decision.details["reason"]


def test_entropy_uniform_is_one_and_peaked_is_low() -> None:
    policy = EntropyPolicy(threshold=0.5)
    assert policy.signal("q", scored(3.0, 3.0, 3.0)) == pytest.approx(1.0)
    # Two candidates: standardized scores are +-1 -> softmax (e^1, e^-1)/Z.
    p = math.exp(1) / (math.exp(1) + math.exp(-1))
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)
    assert policy.signal("q", scored(5.0, 1.0)) == pytest.approx(expected)
    peaked = policy.signal("q", scored(50.0, *[1.0] * 7))
    flatter = policy.signal("q", scored(8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0))
    assert peaked is not None and flatter is not None and peaked < flatter
    threshold = EntropyPolicy(threshold=(peaked + flatter) / 2)
    assert threshold.decide("q", scored(50.0, *[1.0] * 7)).rerank is False
    assert threshold.decide("q", scored(8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0)).rerank is True


def test_agreement_reads_fusion_ranks() -> None:
    def ids(*names: str) -> list[Candidate]:
        return [Candidate(text=n, id=n) for n in names]

    agree = reciprocal_rank_fusion({"bm25": ids("a", "b", "c"), "dense": ids("b", "a", "d")})
    policy = AgreementPolicy(threshold=0.5, k=2)
    assert policy.signal("q", agree) == pytest.approx(1.0)
    assert policy.decide("q", agree).rerank is False
    disagree = reciprocal_rank_fusion({"bm25": ids("a", "b"), "dense": ids("c", "d")})
    assert policy.signal("q", disagree) == pytest.approx(0.0)
    assert policy.decide("q", disagree).rerank is True
    # Without fusion metadata there is nothing to agree on: rerank.
    assert policy.decide("q", ids("a", "b")).rerank is True


def test_combined_policies() -> None:
    candidates = scored(10.0, 6.0, 4.0, 0.0)  # margin 0.4
    both = parse_policy("margin:0.3&margin:0.5")
    either = parse_policy("margin:0.3|margin:0.5")
    assert isinstance(both, CombinedPolicy)
    assert both.decide("q", candidates).rerank is True
    assert either.decide("q", candidates).rerank is False
    parts = either.decide("q", candidates).details["parts"]
    assert [part["rerank"] for part in parts] == [False, True]


@pytest.mark.parametrize(
    "spec",
    [
        "always",
        "never",
        "margin:0.3:2",
        "entropy:0.7:1",
        "agreement:0.6:10",
        "margin:0.2:2&entropy:0.5:2",
    ],
)
def test_spec_round_trips(spec: str) -> None:
    policy = parse_policy(spec)
    assert parse_policy(policy.spec).spec == policy.spec  # type: ignore[attr-defined]


def test_parse_defaults_and_errors() -> None:
    assert isinstance(parse_policy("ALWAYS"), AlwaysRerank)
    assert isinstance(parse_policy("never"), NeverRerank)
    assert parse_policy("margin:0.3").spec == "margin:0.3:2"  # type: ignore[attr-defined]
    for bad in ["bogus", "margin", "margin:x", "margin:0.3:1", "entropy:0.3:-1", "a&b|c", ""]:
        with pytest.raises(InvalidInputError):
            parse_policy(bad)


def test_engine_skips_and_serializes(keyword_backend) -> None:  # type: ignore[no-untyped-def]
    candidates = scored(10.0, 1.0, 0.5)
    reranker = Reranker(keyword_backend, selective=MarginPolicy(threshold=0.5))
    result = reranker.rerank("doc", candidates)
    assert result.report.status == "skipped"
    assert result.report.selective is not None and result.report.selective.signal == pytest.approx(
        9.0 / 9.5
    )
    config = Reranker("embedding", selective=parse_policy("entropy:0.4")).to_config()
    assert config["selective"] == "entropy:0.4:1"
    rebuilt = Reranker.from_config(config)
    assert rebuilt.selective.spec == "entropy:0.4:1"  # type: ignore[attr-defined]
