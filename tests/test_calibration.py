"""Calibrators: known-answer fits, JSON round trips, ECE/Brier, use as a normalizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossrank import Reranker
from crossrank.calibration import (
    IsotonicCalibrator,
    PlattCalibrator,
    brier_score,
    expected_calibration_error,
    fit_calibrator,
    load_calibrator,
    save_calibrator,
)
from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.normalize import Normalizer, Sigmoid


def logistic_data(
    n: int = 20000, slope: float = 0.5, intercept: float = -2.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 4.0, size=n)
    probabilities = 1.0 / (1.0 + np.exp(-(slope * scores + intercept)))
    return scores, (rng.random(n) < probabilities).astype(int)


def test_platt_recovers_the_generating_parameters() -> None:
    scores, labels = logistic_data()
    calibrator = PlattCalibrator.fit(scores, labels)
    assert calibrator.slope == pytest.approx(0.5, abs=0.05)
    assert calibrator.intercept == pytest.approx(-2.0, abs=0.15)


def test_calibration_cuts_ece_of_a_miscalibrated_sigmoid() -> None:
    scores, labels = logistic_data()
    train, test = slice(0, 10000), slice(10000, None)
    raw_ece = expected_calibration_error(Sigmoid()(scores[test]), labels[test])
    for kind in ("platt", "isotonic"):
        calibrator = fit_calibrator(kind, scores[train], labels[train])
        calibrated = calibrator(scores[test])
        assert expected_calibration_error(calibrated, labels[test]) < raw_ece / 2
        assert brier_score(calibrated, labels[test]) < brier_score(
            Sigmoid()(scores[test]), labels[test]
        )


def test_isotonic_matches_scikit_learn_predictions() -> None:
    from sklearn.isotonic import IsotonicRegression

    scores, labels = logistic_data(n=2000)
    ours = IsotonicCalibrator.fit(scores, labels)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, labels)
    probe = np.linspace(-20, 20, 101)
    np.testing.assert_allclose(ours(probe), reference.predict(probe), atol=1e-12)


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_json_round_trip_and_normalizer_protocol(kind: str, tmp_path, keyword_backend) -> None:  # type: ignore[no-untyped-def]
    scores, labels = logistic_data(n=3000)
    calibrator = fit_calibrator(kind, scores, labels)
    path = tmp_path / "calibrator.json"
    save_calibrator(calibrator, path)
    loaded = load_calibrator(path)
    probe = np.array([-5.0, 0.0, 5.0])
    np.testing.assert_allclose(loaded(probe), calibrator(probe))
    assert isinstance(loaded, Normalizer)
    assert json.loads(path.read_text())["kind"] == kind
    reranker = Reranker(keyword_backend, normalization=loaded, threshold=0.0)
    result = reranker.rerank("cats", ["cats and dogs", "fish"])
    assert result.report.normalization == kind
    assert all(0.0 <= score <= 1.0 for score in result.scores)


def test_ece_and_brier_hand_computed() -> None:
    probabilities = [0.05, 0.15, 0.95, 0.85]
    labels = [0, 1, 1, 1]
    # bins: 0.0-0.1 {0.05 vs 0}, 0.1-0.2 {0.15 vs 1}, 0.8-0.9 {0.85 vs 1}, 0.9-1.0 {0.95 vs 1}
    expected = (0.05 + 0.85 + 0.15 + 0.05) / 4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    assert brier_score(probabilities, labels) == pytest.approx(
        (0.05**2 + 0.85**2 + 0.05**2 + 0.15**2) / 4
    )


def test_bad_inputs_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="both relevant and non-relevant"):
        PlattCalibrator.fit([1.0, 2.0], [1, 1])
    with pytest.raises(InvalidInputError, match="0 or 1"):
        PlattCalibrator.fit([1.0, 2.0], [0, 2])
    with pytest.raises(InvalidInputError, match="unknown calibrator"):
        fit_calibrator("beta", [1.0, 2.0], [0, 1])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "kind": "platt"}')
    with pytest.raises(ConfigurationError, match="missing field"):
        load_calibrator(bad)
    with pytest.raises(ConfigurationError, match="non-decreasing"):
        IsotonicCalibrator(knots_x=[1.0, 0.0], knots_y=[0.0, 1.0])
