"""Calibrators: map raw reranker scores to probabilities of relevance a caller can threshold.

Softmax says how a candidate compares with this query's other candidates; it cannot say
"this passage is relevant with probability 0.8". A calibrator fitted on labelled
(raw score, relevant?) pairs can. Two are offered:

- :class:`PlattCalibrator` — logistic regression on the raw score (two parameters; smooth,
  monotone, data-frugal);
- :class:`IsotonicCalibrator` — isotonic regression (monotone step function; more flexible,
  needs more data).

Both are fitted with scikit-learn but evaluated with numpy alone, are saved to and loaded
from a small JSON file, and implement :class:`crossrank.normalize.Normalizer`, so they plug
in as ``Reranker(normalization=calibrator)``. Because they map each score on its own, a
calibrated score means the same thing whatever the other candidates are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crossrank.errors import ConfigurationError, InvalidInputError, missing_dependency

FloatArray = NDArray[np.float64]
FORMAT_VERSION = 1


def _training_arrays(raw_scores: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, FloatArray]:
    scores = np.asarray(raw_scores, dtype=np.float64).ravel()
    targets = np.asarray(labels, dtype=np.float64).ravel()
    if scores.size != targets.size:
        raise InvalidInputError(f"got {scores.size} scores but {targets.size} labels")
    if scores.size == 0:
        raise InvalidInputError("cannot fit a calibrator on zero examples")
    if not np.all(np.isfinite(scores)):
        raise InvalidInputError("calibration scores must all be finite")
    if not np.all((targets == 0) | (targets == 1)):
        bad = targets[(targets != 0) & (targets != 1)][0]
        raise InvalidInputError(f"calibration labels must be 0 or 1, got {bad!r}")
    if targets.min() == targets.max():
        raise InvalidInputError(
            "calibration needs both relevant and non-relevant examples; all labels are "
            f"{int(targets[0])}"
        )
    return scores, targets


def _sigmoid(values: FloatArray) -> FloatArray:
    out = np.empty_like(values)
    positive = values >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-values[positive]))
    exp_neg = np.exp(values[~positive])
    out[~positive] = exp_neg / (1.0 + exp_neg)
    return out


class PlattCalibrator:
    """p(relevant | s) = sigmoid(slope * s + intercept)."""

    name = "platt"
    bounds = (0.0, 1.0)

    def __init__(self, *, slope: float, intercept: float) -> None:
        for label, value in (("slope", slope), ("intercept", intercept)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigurationError(f"Platt {label} must be a finite number, got {value!r}")
        self.slope = float(slope)
        self.intercept = float(intercept)

    @classmethod
    def fit(cls, raw_scores: ArrayLike, labels: ArrayLike) -> PlattCalibrator:
        """Fit on pooled (raw score, 0/1 label) pairs from labelled queries."""
        scores, targets = _training_arrays(raw_scores, labels)
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as exc:
            raise missing_dependency("scikit-learn", "eval") from exc
        # Almost no regularization: two parameters cannot overfit, and a strong prior would
        # pull probabilities toward 0.5 (miscalibrating exactly what we fit for).
        model = LogisticRegression(C=1e6, max_iter=1000)
        model.fit(scores.reshape(-1, 1), targets)
        return cls(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        values = np.asarray(raw_scores, dtype=np.float64)
        with np.errstate(over="ignore"):  # an overflowing logit saturates to 0 or 1
            return _sigmoid(self.slope * values + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "kind": "platt",
            "slope": self.slope,
            "intercept": self.intercept,
        }

    def __repr__(self) -> str:
        return f"PlattCalibrator(slope={self.slope:.4g}, intercept={self.intercept:.4g})"


class IsotonicCalibrator:
    """A monotone piecewise-linear map through fitted (score, probability) knots.

    Evaluation interpolates linearly between knots and clamps outside them, which is what
    scikit-learn's ``IsotonicRegression(out_of_bounds="clip").predict`` does.
    """

    name = "isotonic"
    bounds = (0.0, 1.0)

    def __init__(self, *, knots_x: Sequence[float], knots_y: Sequence[float]) -> None:
        try:
            x = np.asarray(knots_x, dtype=np.float64)
            y = np.asarray(knots_y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"isotonic knots must be lists of numbers, got {knots_x!r} and {knots_y!r}"
            ) from exc
        if x.ndim != 1 or x.size == 0 or x.size != y.size:
            raise ConfigurationError(
                f"isotonic knots must be two non-empty lists of equal length, got {x.size} "
                f"and {y.size}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ConfigurationError("isotonic knots must be finite")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ConfigurationError("isotonic knots must be non-decreasing in x and y")
        if y.min() < 0 or y.max() > 1:
            raise ConfigurationError("isotonic knot probabilities must lie in [0, 1]")
        self.knots_x = x
        self.knots_y = y

    @classmethod
    def fit(cls, raw_scores: ArrayLike, labels: ArrayLike) -> IsotonicCalibrator:
        scores, targets = _training_arrays(raw_scores, labels)
        try:
            from sklearn.isotonic import IsotonicRegression
        except ImportError as exc:
            raise missing_dependency("scikit-learn", "eval") from exc
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        model.fit(scores, targets)
        return cls(knots_x=model.X_thresholds_, knots_y=model.y_thresholds_)

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        values = np.asarray(raw_scores, dtype=np.float64)
        return np.interp(values, self.knots_x, self.knots_y).astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "kind": "isotonic",
            "knots_x": [float(value) for value in self.knots_x],
            "knots_y": [float(value) for value in self.knots_y],
        }

    def __repr__(self) -> str:
        return f"IsotonicCalibrator({self.knots_x.size} knots)"


Calibrator = PlattCalibrator | IsotonicCalibrator
CALIBRATORS: dict[str, type[PlattCalibrator] | type[IsotonicCalibrator]] = {
    "platt": PlattCalibrator,
    "isotonic": IsotonicCalibrator,
}


def fit_calibrator(kind: str, raw_scores: ArrayLike, labels: ArrayLike) -> Calibrator:
    """Fit the calibrator named ``kind`` (``"platt"`` or ``"isotonic"``)."""
    cls = CALIBRATORS.get(str(kind).strip().lower())
    if cls is None:
        raise InvalidInputError(
            f"unknown calibrator {kind!r}; expected one of {sorted(CALIBRATORS)}"
        )
    return cls.fit(raw_scores, labels)


def calibrator_from_dict(data: Any) -> Calibrator:
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"calibrator file must hold a JSON object, got {type(data).__name__}"
        )
    kind = data.get("kind")
    if data.get("format") != FORMAT_VERSION:
        raise ConfigurationError(f"unsupported calibrator format {data.get('format')!r}")
    try:
        if kind == "platt":
            return PlattCalibrator(slope=data["slope"], intercept=data["intercept"])
        if kind == "isotonic":
            return IsotonicCalibrator(knots_x=data["knots_x"], knots_y=data["knots_y"])
    except KeyError as exc:
        raise ConfigurationError(f"{kind} calibrator is missing field {exc}") from exc
    raise ConfigurationError(
        f"unknown calibrator kind {kind!r}; expected one of {sorted(CALIBRATORS)}"
    )


def save_calibrator(calibrator: Calibrator, path: str | Path) -> None:
    Path(path).write_text(json.dumps(calibrator.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_calibrator(path: str | Path) -> Calibrator:
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"calibrator file {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"calibrator file {str(file)!r} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"calibrator file {str(file)!r} is not valid JSON: {exc}") from exc
    return calibrator_from_dict(data)


def expected_calibration_error(
    probabilities: ArrayLike, labels: ArrayLike, *, bins: int = 10
) -> float:
    """ECE over equal-width probability bins: sum_b (n_b / n) * |mean(p_b) - mean(y_b)|."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size != y.size or p.size == 0:
        raise InvalidInputError(
            f"need equal, non-zero numbers of probabilities and labels, got {p.size} and {y.size}"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidInputError(f"bins must be a positive integer, got {bins!r}")
    # Bin b holds p in [b/bins, (b+1)/bins); p == 1 falls in the last bin.
    which = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for bin_index in range(bins):
        members = which == bin_index
        if members.any():
            error += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(error)


def brier_score(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared error between probabilities and 0/1 labels."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size != y.size or p.size == 0:
        raise InvalidInputError(
            f"need equal, non-zero numbers of probabilities and labels, got {p.size} and {y.size}"
        )
    return float(np.mean((p - y) ** 2))


__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "brier_score",
    "calibrator_from_dict",
    "expected_calibration_error",
    "fit_calibrator",
    "load_calibrator",
    "save_calibrator",
]
