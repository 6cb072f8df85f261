"""Selective reranking: skip the expensive second stage when the first stage is already sure.

A policy reads only first-stage evidence (scores, ranks, metadata) and returns a
:class:`~crossrank.types.SelectiveDecision`; the engine records it in every result.

Threshold policies compute one *signal* per query and compare it with a threshold:

- ``margin:T[:K]`` — min-max normalized gap between the top-1 and the top-K first-stage
  score (K = 2 by default); a wide gap means the first stage is confident, so the reranker
  is skipped when ``signal >= T``.
- ``entropy:T[:TEMP]`` — normalized entropy (0 = one candidate holds all mass, 1 = uniform)
  of the softmax over standardized first-stage scores; low entropy means confident, so the
  reranker is skipped when ``signal <= T``. Standardizing first makes the signal the same
  for BM25 scores and cosine similarities.
- ``agreement:T[:K]`` — overlap of the top-K of two first-stage rankings (hybrid
  retrieval), read from the ranks :mod:`crossrank.fusion` writes under
  ``FIRST_STAGE_RANKS_KEY``; high overlap means both retrievers agree, so the reranker is
  skipped when ``signal >= T``.

Policies combine: ``"margin:0.4&entropy:0.6"`` skips only when every part would skip (the
cautious choice), ``"margin:0.4|entropy:0.6"`` skips when any part would. When a signal
cannot be computed (no first-stage scores, no fusion ranks) the policy reranks: skipping
is an optimization, and without evidence the safe default is to do the work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from crossrank.errors import InvalidInputError
from crossrank.types import Candidate, SelectiveDecision


@runtime_checkable
class SelectivePolicy(Protocol):
    """Decides, per query, whether the reranker should run."""

    @property
    def name(self) -> str: ...

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision: ...


class AlwaysRerank:
    """The default: every query is reranked."""

    name = "always"
    spec = "always"

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        return SelectiveDecision(policy=self.name, rerank=True)


class NeverRerank:
    """First stage only: useful as a baseline and as an emergency off switch."""

    name = "never"
    spec = "never"

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        return SelectiveDecision(policy=self.name, rerank=False)


def _check_threshold(threshold: float) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        raise InvalidInputError(f"selective threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def _check_k(k: int, what: str, minimum: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < minimum:
        raise InvalidInputError(f"{what} k must be an integer >= {minimum}, got {k!r}")
    return k


def _first_stage_scores(candidates: Sequence[Candidate]) -> np.ndarray | None:
    scores = [candidate.first_stage_score for candidate in candidates]
    if not scores or any(score is None for score in scores):
        return None
    values = np.asarray(scores, dtype=np.float64)
    return values if np.all(np.isfinite(values)) else None


class ThresholdPolicy:
    """Shared machinery: compute a signal, compare it with a threshold in one direction."""

    kind: str = ""
    #: ``"above"``: skip when signal >= threshold; ``"below"``: skip when signal <= threshold.
    skip_when: Literal["above", "below"] = "above"

    def __init__(self, *, threshold: float) -> None:
        self.threshold = _check_threshold(threshold)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def spec(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def signal(self, query: str, candidates: Sequence[Candidate]) -> float | None:
        """The confidence signal for this query, or ``None`` when it cannot be computed."""
        raise NotImplementedError  # pragma: no cover

    def skips_at(self, signal: float, threshold: float) -> bool:
        """Whether ``signal`` means skip under ``threshold`` (used by threshold tuning too)."""
        return signal >= threshold if self.skip_when == "above" else signal <= threshold

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        value = self.signal(query, candidates)
        if value is None:
            return SelectiveDecision(
                policy=self.spec,
                rerank=True,
                signal=None,
                threshold=self.threshold,
                details={"reason": "no signal: missing first-stage evidence"},
            )
        return SelectiveDecision(
            policy=self.spec,
            rerank=not self.skips_at(value, self.threshold),
            signal=value,
            threshold=self.threshold,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class MarginPolicy(ThresholdPolicy):
    """Skip when the top-1 first-stage score stands clearly above the top-k one."""

    kind = "margin"
    skip_when = "above"

    def __init__(self, *, threshold: float, k: int = 2) -> None:
        super().__init__(threshold=threshold)
        self.k = _check_k(k, "margin", 2)

    @property
    def spec(self) -> str:
        return f"margin:{self.threshold:g}:{self.k}"

    def signal(self, query: str, candidates: Sequence[Candidate]) -> float | None:
        scores = _first_stage_scores(candidates)
        if scores is None or scores.size < 2:
            return None
        ordered = np.sort(scores)[::-1]
        spread = ordered[0] - ordered[-1]
        if spread <= 0:
            return 0.0  # all tied: no evidence of confidence
        kth = ordered[min(self.k, ordered.size) - 1]
        return float((ordered[0] - kth) / spread)


class EntropyPolicy(ThresholdPolicy):
    """Skip when the softmax over standardized first-stage scores is peaked (low entropy)."""

    kind = "entropy"
    skip_when = "below"

    def __init__(self, *, threshold: float, temperature: float = 1.0) -> None:
        super().__init__(threshold=threshold)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise InvalidInputError(f"entropy temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    @property
    def spec(self) -> str:
        return f"entropy:{self.threshold:g}:{self.temperature:g}"

    def signal(self, query: str, candidates: Sequence[Candidate]) -> float | None:
        scores = _first_stage_scores(candidates)
        if scores is None or scores.size < 2:
            return None
        deviation = float(scores.std())
        if deviation <= 0:
            return 1.0  # all tied: uniform, maximally uncertain
        scaled = (scores - scores.mean()) / (deviation * self.temperature)
        weights = np.exp(scaled - scaled.max())
        probabilities = weights / weights.sum()
        nonzero = probabilities[probabilities > 0]
        entropy = float(-(nonzero * np.log(nonzero)).sum())
        return entropy / math.log(scores.size)


class AgreementPolicy(ThresholdPolicy):
    """Skip when two fused first-stage rankings share most of their top-k."""

    kind = "agreement"
    skip_when = "above"

    def __init__(
        self, *, threshold: float, k: int = 10, lists: tuple[str, str] | None = None
    ) -> None:
        super().__init__(threshold=threshold)
        self.k = _check_k(k, "agreement", 1)
        self.lists = lists

    @property
    def spec(self) -> str:
        return f"agreement:{self.threshold:g}:{self.k}"

    def signal(self, query: str, candidates: Sequence[Candidate]) -> float | None:
        from crossrank.fusion import FIRST_STAGE_RANKS_KEY

        per_list: dict[str, set[int]] = {}
        for position, candidate in enumerate(candidates):
            ranks = candidate.metadata.get(FIRST_STAGE_RANKS_KEY)
            if not isinstance(ranks, dict):
                continue
            for list_name, rank in ranks.items():
                per_list.setdefault(str(list_name), set())
                if isinstance(rank, int) and rank <= self.k:
                    per_list[str(list_name)].add(position)
        names = list(self.lists) if self.lists else sorted(per_list)[:2]
        if len(names) < 2 or any(name not in per_list for name in names):
            return None
        first, second = per_list[names[0]], per_list[names[1]]
        return len(first & second) / self.k


class CombinedPolicy:
    """Several policies at once: ``mode="all"`` skips only if all skip, ``"any"`` if any does."""

    def __init__(self, policies: Sequence[SelectivePolicy], *, mode: Literal["all", "any"]) -> None:
        if len(policies) < 2:
            raise InvalidInputError("a combined policy needs at least two policies")
        if mode not in ("all", "any"):
            raise InvalidInputError(f"combination mode must be 'all' or 'any', got {mode!r}")
        self.policies = tuple(policies)
        self.mode = mode

    @property
    def spec(self) -> str:
        joiner = "&" if self.mode == "all" else "|"
        specs = [getattr(policy, "spec", None) for policy in self.policies]
        if any(spec is None for spec in specs):
            raise InvalidInputError("a combined policy is serializable only if every part is")
        return joiner.join(str(spec) for spec in specs)

    @property
    def name(self) -> str:
        return self.spec

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        parts = [policy.decide(query, candidates) for policy in self.policies]
        skips = [not part.rerank for part in parts]
        skip = all(skips) if self.mode == "all" else any(skips)
        return SelectiveDecision(
            policy=self.name,
            rerank=not skip,
            signal=parts[0].signal,
            threshold=parts[0].threshold,
            details={
                "mode": self.mode,
                "parts": [
                    {
                        "policy": part.policy,
                        "rerank": part.rerank,
                        "signal": part.signal,
                        "threshold": part.threshold,
                    }
                    for part in parts
                ],
            },
        )

    def __repr__(self) -> str:
        return f"CombinedPolicy({self.spec!r})"


#: policy kind -> (class, name of the optional second argument, its type)
_THRESHOLD_POLICIES: dict[str, tuple[type[ThresholdPolicy], str, type]] = {
    "margin": (MarginPolicy, "k", int),
    "entropy": (EntropyPolicy, "temperature", float),
    "agreement": (AgreementPolicy, "k", int),
}


def _parse_single(spec: str) -> SelectivePolicy:
    key = spec.strip().lower()
    if key == "always":
        return AlwaysRerank()
    if key == "never":
        return NeverRerank()
    kind, _, rest = key.partition(":")
    if kind not in _THRESHOLD_POLICIES:
        raise InvalidInputError(
            f"unknown selective policy {spec!r}; expected always, never, "
            "margin:T[:K], entropy:T[:TEMPERATURE] or agreement:T[:K]"
        )
    cls, option, option_type = _THRESHOLD_POLICIES[kind]
    parts = [part for part in rest.split(":")] if rest else []
    if not parts or len(parts) > 2 or not parts[0]:
        raise InvalidInputError(
            f"selective policy {spec!r} needs '{kind}:THRESHOLD[:{option.upper()}]'"
        )
    try:
        threshold = float(parts[0])
        extra = {option: option_type(parts[1])} if len(parts) == 2 else {}
    except ValueError as exc:
        raise InvalidInputError(f"bad selective policy {spec!r}: {exc}") from exc
    return cls(threshold=threshold, **extra)


def parse_policy(spec: str) -> SelectivePolicy:
    """Build a policy from its spec string (``"always"``, ``"never"``, ``"margin:0.3"``...).

    Policies that can be serialized expose the same string as ``spec``; ``&`` and ``|``
    combine policies (skip if all / any would skip).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(f"selective policy spec must be a non-empty string, got {spec!r}")
    if "&" in spec and "|" in spec:
        raise InvalidInputError(f"selective policy {spec!r} mixes '&' and '|'; use one")
    for joiner, mode in (("&", "all"), ("|", "any")):
        if joiner in spec:
            return CombinedPolicy(
                [_parse_single(part) for part in spec.split(joiner)],
                mode=mode,  # type: ignore[arg-type]
            )
    return _parse_single(spec)


__all__ = [
    "AgreementPolicy",
    "AlwaysRerank",
    "CombinedPolicy",
    "EntropyPolicy",
    "MarginPolicy",
    "NeverRerank",
    "SelectivePolicy",
    "ThresholdPolicy",
    "parse_policy",
]
