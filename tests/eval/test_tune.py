"""The configuration chooser: multiplicity-aware significance and pessimistic selection."""

from __future__ import annotations

import numpy as np
import pytest

from crossrank.eval.metrics import max_gain_test, paired_tests
from crossrank.eval.tune import Option, choose, lower_gain_bound

QUERIES = [f"q{i}" for i in range(16)]


def _option(name: str, ndcg: list[float], *, selective: str = "always") -> Option:
    return Option(
        selective,
        name,
        dict(zip(QUERIES, ndcg, strict=True)),
        dict.fromkeys(QUERIES, selective == "never"),
    )


def test_a_uniform_gain_on_every_query_reaches_the_smallest_possible_p() -> None:
    # Only the all-plus sign pattern (probability 2**-10) reaches the observed maximum.
    p = max_gain_test(np.full((3, 10), 0.05), permutations=20000, seed=1)
    assert p == pytest.approx(2**-10, abs=0.0008)


def test_the_best_of_many_noise_options_is_not_significant() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.1, size=(300, 16))
    winner = noise[np.argmax(noise.mean(axis=1))]
    alone = paired_tests(dict.fromkeys(QUERIES, 0.0), dict(zip(QUERIES, winner, strict=True)))
    family = max_gain_test(noise, permutations=4000)
    # Tested alone the luckiest of 300 looks real; tested as the maximum it does not.
    assert alone["p_randomization"] < 0.05
    assert family > 0.3


def test_max_gain_test_rejects_an_empty_matrix() -> None:
    with pytest.raises(ValueError, match="at least one configuration"):
        max_gain_test(np.zeros((0, 0)))


def test_noise_options_leave_the_first_stage_in_place() -> None:
    rng = np.random.default_rng(5)
    first = rng.uniform(0.2, 0.8, size=16)
    options = [_option("first", list(first), selective="never")]
    options.append(_option(None, list(first), selective="always"))  # type: ignore[arg-type]
    options += [
        _option(f"noise{i}", list(np.clip(first + rng.normal(0, 0.15, 16), 0, 1)))
        for i in range(200)
    ]
    assert choose(options, QUERIES, mode="best").selective == "never"


def test_a_steady_gain_is_preferred_to_a_larger_erratic_one() -> None:
    first = [0.4] * 16
    steady = [0.46] * 16
    erratic = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0] + [0.45] * 10  # mean 0.53, wide spread
    options = [
        _option("first", first, selective="never"),
        _option(None, erratic),  # type: ignore[arg-type]
        _option("weighted:0.5", steady),
    ]
    chosen = choose(options, QUERIES, mode="best", max_p=0.05)
    assert chosen.blend == "weighted:0.5"
    assert lower_gain_bound(options[2], options[0], QUERIES) == pytest.approx(0.06)
    assert lower_gain_bound(options[1], options[0], QUERIES) < 0.06
