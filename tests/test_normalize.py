"""Normalizations: exact values on known inputs and sanity on ties and extremes."""

from __future__ import annotations

import numpy as np
import pytest

from crossrank.errors import InvalidInputError
from crossrank.normalize import Identity, MinMax, Sigmoid, Softmax, resolve_normalizer


def test_softmax_known_values() -> None:
    out = Softmax()(np.array([0.0, np.log(3.0)]))
    assert out.tolist() == pytest.approx([0.25, 0.75])


def test_softmax_temperature() -> None:
    out = Softmax(temperature=2.0)(np.array([0.0, 2 * np.log(3.0)]))
    assert out.tolist() == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("values", [[1e308, -1e308], [-1e308, -1e308 + 1], [5.0], [3.0, 3.0, 3.0]])
def test_softmax_extreme_and_ties(values: list[float]) -> None:
    out = Softmax()(np.array(values))
    assert np.isfinite(out).all()
    assert out.sum() == pytest.approx(1.0)


def test_softmax_empty() -> None:
    assert Softmax()(np.array([])).size == 0


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf")])
def test_softmax_bad_temperature(temperature: float) -> None:
    with pytest.raises(InvalidInputError, match="temperature"):
        Softmax(temperature=temperature)


def test_sigmoid_known_values_and_extremes() -> None:
    out = Sigmoid()(np.array([0.0, 2.0, -2.0, 1000.0, -1000.0]))
    assert out[0] == 0.5
    assert out[1] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert out[2] == pytest.approx(1 - out[1])
    assert out[3] == 1.0 and out[4] == 0.0


def test_minmax_ties_and_single() -> None:
    assert MinMax()(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    assert MinMax()(np.array([7.0])).tolist() == [1.0]
    assert MinMax()(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]


def test_identity() -> None:
    assert Identity()(np.array([-3.5, 2.0])).tolist() == [-3.5, 2.0]


@pytest.mark.parametrize(
    ("spec", "cls"),
    [("softmax", Softmax), ("SIGMOID", Sigmoid), ("min-max", MinMax), ("raw", Identity)],
)
def test_resolve(spec: str, cls: type) -> None:
    assert isinstance(resolve_normalizer(spec), cls)


def test_resolve_rejects_other_objects() -> None:
    with pytest.raises(InvalidInputError, match="normalization must be one of"):
        resolve_normalizer(3)  # type: ignore[arg-type]
