"""The fidelity rule: small on average, and no collection's change beyond chance."""

from __future__ import annotations

import numpy as np
import pytest

from crossrank import InvalidInputError
from crossrank.eval.fidelity_rule import judge_fidelity


def _runs(deltas: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], ...]:
    rng = np.random.default_rng(3)
    reference: dict[str, dict[str, float]] = {}
    variant: dict[str, dict[str, float]] = {}
    for collection, delta in deltas.items():
        base = rng.uniform(0.2, 0.8, size=delta.size)
        reference[collection] = {f"q{i}": float(v) for i, v in enumerate(base)}
        variant[collection] = {f"q{i}": float(v) for i, v in enumerate(base + delta)}
    return reference, variant


def test_chance_flips_pass_even_when_one_collection_moves() -> None:
    # Near-tie flips both ways: collection "a" ends 0.005 up, by chance (21 up, 19 down).
    flips = {
        "a": np.array([0.1] * 21 + [-0.1] * 19),
        "b": np.array([0.1] * 20 + [-0.1] * 20),
        "c": np.array([0.1, -0.1] * 20),
    }
    reference, variant = _runs(flips)
    verdict = judge_fidelity(reference, variant, permutations=2000)
    assert verdict.collections[0].delta == pytest.approx(0.005)
    assert verdict.collections[0].p_value > 0.5
    assert verdict.mean_abs_delta == pytest.approx(0.005 / 3)
    assert verdict.passed
    assert "passes" in verdict.table()


def test_a_systematic_loss_is_significant_and_fails() -> None:
    reference, variant = _runs({"a": np.full(40, -0.03), "b": np.zeros(40)})
    verdict = judge_fidelity(reference, variant, permutations=2000)
    assert verdict.collections[0].significant
    assert not verdict.passed


def test_identical_runs_pass() -> None:
    reference, _ = _runs({"a": np.zeros(10)})
    verdict = judge_fidelity(reference, reference, permutations=500)
    assert verdict.passed and verdict.mean_abs_delta == pytest.approx(0.0)


def test_collections_must_match() -> None:
    reference, variant = _runs({"a": np.zeros(5)})
    with pytest.raises(InvalidInputError, match="same collections"):
        judge_fidelity(reference, {"b": variant["a"]})


def test_holm_correction_adjusts_for_testing_every_collection() -> None:
    from crossrank.eval.fidelity_rule import CollectionDelta, FidelityVerdict

    rows = tuple(
        CollectionDelta(name, 30, 0.001, p)
        for name, p in (("a", 0.04), ("b", 0.01), ("c", 0.5), ("d", 0.03))
    )
    verdict = FidelityVerdict(collections=rows, mean_abs_delta=0.001)
    # sorted p 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1, kept non-decreasing
    assert verdict.holm_p_values == pytest.approx((0.09, 0.04, 0.5, 0.09))
    assert not verdict.passed and not verdict.passed_with_holm
    lone = FidelityVerdict(collections=(rows[0], rows[2]), mean_abs_delta=0.001)
    assert not lone.passed, "0.04 is significant on its own"
    assert lone.passed_with_holm, "0.04 x 2 tests = 0.08 is not"
    assert "with Holm's correction across 2: passes" in lone.table()
