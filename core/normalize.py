"""Turning raw reranker scores into numbers a caller can compare and threshold.

Raw cross-encoder logits are unbounded and model-specific; a threshold of 0.5 means nothing
on them. Softmax over the candidate set (the default) makes scores a distribution over this
query's candidates; sigmoid gives per-pair values independent of the other candidates;
min-max spreads them over [0, 1]; ``"none"`` keeps the raw values. Fitted calibrators
(:mod:`crossrank.calibration`) implement the same protocol.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from crossrank.errors import InvalidInputError

FloatArray = NDArray[np.float64]


@runtime_checkable
class Normalizer(Protocol):
    """Maps one query's raw scores to normalized scores of the same length and order."""

    @property
    def name(self) -> str: ...

    @property
    def bounds(self) -> tuple[float, float]:
        """The closed range every output lies in; thresholds outside it are rejected."""
        ...

    def __call__(self, raw_scores: FloatArray) -> FloatArray: ...


class Softmax:
    """Softmax over the candidate set with a temperature (higher = flatter)."""

    bounds = (0.0, 1.0)

    def __init__(self, *, temperature: float = 1.0) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
            raise InvalidInputError(f"temperature must be a finite number, got {temperature!r}")
        if temperature <= 0:
            raise InvalidInputError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    @property
    def name(self) -> str:
        return "softmax" if self.temperature == 1.0 else f"softmax(t={self.temperature:g})"

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        if raw_scores.size == 0:
            return raw_scores.astype(np.float64)
        values = raw_scores.astype(np.float64)
        # Shift before scaling: dividing huge finite scores by a small temperature would
        # overflow to inf (and inf - inf is NaN). A gap beyond float range underflows to 0.
        with np.errstate(over="ignore"):
            shifted = np.exp((values - values.max()) / self.temperature)
        return shifted / shifted.sum()


class Sigmoid:
    """Per-pair logistic squashing: the usual reading of a one-logit cross-encoder."""

    name = "sigmoid"
    bounds = (0.0, 1.0)

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        values = raw_scores.astype(np.float64)
        # Split by sign so exp never overflows on extreme logits.
        out = np.empty_like(values)
        positive = values >= 0
        out[positive] = 1.0 / (1.0 + np.exp(-values[positive]))
        exp_neg = np.exp(values[~positive])
        out[~positive] = exp_neg / (1.0 + exp_neg)
        return out


class MinMax:
    """Linear rescale to [0, 1]; when all scores tie every candidate gets 1.0."""

    name = "minmax"
    bounds = (0.0, 1.0)

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        values = raw_scores.astype(np.float64)
        if values.size == 0:
            return values
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.ones_like(values)
        if not math.isfinite(high - low):
            # The span overflows float64; halving everything first keeps it representable.
            return (values / 2 - low / 2) / (high / 2 - low / 2)
        return (values - low) / (high - low)


class Identity:
    """Raw scores unchanged (thresholds then apply to the model's own scale)."""

    name = "none"
    bounds = (-math.inf, math.inf)

    def __call__(self, raw_scores: FloatArray) -> FloatArray:
        return raw_scores.astype(np.float64)


NORMALIZATIONS = ("softmax", "sigmoid", "minmax", "none")


def resolve_normalizer(spec: str | Normalizer, *, temperature: float = 1.0) -> Normalizer:
    """Turn a name (or a ready normalizer, e.g. a fitted calibrator) into a normalizer."""
    if not isinstance(spec, str):
        if isinstance(spec, Normalizer):
            return spec
        raise InvalidInputError(
            f"normalization must be one of {NORMALIZATIONS} or a Normalizer, got {spec!r}"
        )
    key = spec.strip().lower().replace("-", "")
    if key == "softmax":
        return Softmax(temperature=temperature)
    if key == "sigmoid":
        return Sigmoid()
    if key == "minmax":
        return MinMax()
    if key in ("none", "raw", "identity"):
        return Identity()
    raise InvalidInputError(f"unknown normalization {spec!r}; expected one of {NORMALIZATIONS}")
