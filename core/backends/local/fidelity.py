"""Does a faster variant rank like fp32? Agreement measures and the gate ``precision="auto"`` uses.

Scores from bf16 or int8 differ from fp32 by design; what a reranker must keep is the
*order*. Two measures, per query of the fidelity sample, then the worst query decides:

- Kendall's tau-b between the variant's and fp32's scores (1 = same order);
- top-k overlap: the share of fp32's top-k that the variant also puts in its top-k.

Thresholds (``DEFAULT_MIN_KENDALL_TAU`` = 0.95, ``DEFAULT_MIN_TOP_K_OVERLAP`` = 0.9 at k=10)
were chosen from ``benchmarks/local_backend.py``: on the trained MiniLM cross-encoder,
variants above them stayed within 0.005 nDCG@10 of fp32 on every shared collection, while
per-tensor int8 (tau about 0.7-0.9) moved nDCG by more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_MIN_KENDALL_TAU = 0.95
DEFAULT_MIN_TOP_K_OVERLAP = 0.9
DEFAULT_TOP_K = 10


def kendall_tau(reference: Sequence[float], candidate: Sequence[float]) -> float:
    """Kendall's tau-b (tie-corrected); 1.0 when both lists are constant or shorter than 2."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"score lists differ in length: {ref.shape[0]} vs {cand.shape[0]}")
    if ref.size < 2:
        return 1.0
    upper = np.triu_indices(ref.size, k=1)
    ref_sign = np.sign(ref[:, None] - ref[None, :])[upper]
    cand_sign = np.sign(cand[:, None] - cand[None, :])[upper]
    concordance = float(np.sum(ref_sign * cand_sign))
    ref_pairs = float(np.count_nonzero(ref_sign))
    cand_pairs = float(np.count_nonzero(cand_sign))
    if ref_pairs == 0 or cand_pairs == 0:
        return 1.0 if ref_pairs == cand_pairs else 0.0
    return concordance / float(np.sqrt(ref_pairs * cand_pairs))


def top_k_overlap(
    reference: Sequence[float], candidate: Sequence[float], *, k: int = DEFAULT_TOP_K
) -> float:
    """Share of the reference's top-``k`` (stable order) also in the candidate's top-``k``."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    depth = min(k, ref.size)
    if depth == 0:
        return 1.0
    ref_top = set(np.argsort(-ref, kind="stable")[:depth].tolist())
    cand_top = set(np.argsort(-cand, kind="stable")[:depth].tolist())
    return len(ref_top & cand_top) / depth


@dataclass(frozen=True)
class Agreement:
    """How one variant ranked the fidelity sample against fp32 (worst query shown), and how
    fast it ran here.

    ``passed`` is auto's whole verdict: the ranking agrees and, when ``speedup`` was
    measured, the variant is fast enough on this machine to be worth it.
    """

    variant: str
    kendall_tau: float
    top_k_overlap: float
    max_abs_diff: float
    passed: bool
    error: str | None = None
    #: Pairs per second on auto's timed sample; ``None`` when not measured.
    pairs_per_second: float | None = None
    #: ``pairs_per_second`` over fp32 torch's on the same sample.
    speedup: float | None = None

    def describe(self) -> str:
        speed = f", {self.speedup:.2f}x fp32 here" if self.speedup is not None else ""
        if self.error is not None:  # not checked: unavailable, too slow, or a faster one won
            return f"{self.variant}: {self.error}{speed}"
        verdict = "passes" if self.passed else "fails"
        return (
            f"{self.variant}: {verdict} (min tau {self.kendall_tau:.4f}, min top-k overlap "
            f"{self.top_k_overlap:.2f}, max |diff| {self.max_abs_diff:.4g}{speed})"
        )


@dataclass(frozen=True)
class FidelityGate:
    """Thresholds a variant must meet on every query of the fidelity sample."""

    min_kendall_tau: float = DEFAULT_MIN_KENDALL_TAU
    min_top_k_overlap: float = DEFAULT_MIN_TOP_K_OVERLAP
    top_k: int = DEFAULT_TOP_K

    def to_dict(self) -> dict[str, Any]:
        """JSON form, so a saved reranker config keeps a custom gate."""
        return asdict(self)

    @classmethod
    def coerce(cls, value: FidelityGate | Mapping[str, Any] | None) -> FidelityGate:
        """A gate from itself, its :meth:`to_dict` form (a loaded config), or the default."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"fidelity_gate must be a FidelityGate or a mapping, got {value!r}")

    def measure(
        self,
        variant: str,
        reference: Sequence[Sequence[float]],
        candidate: Sequence[Sequence[float]],
    ) -> Agreement:
        """Compare per-query score lists; the worst query's tau and overlap decide."""
        taus = [kendall_tau(r, c) for r, c in zip(reference, candidate, strict=True)]
        overlaps = [
            top_k_overlap(r, c, k=self.top_k) for r, c in zip(reference, candidate, strict=True)
        ]
        diffs = [
            float(np.max(np.abs(np.asarray(r) - np.asarray(c)))) if len(r) else 0.0
            for r, c in zip(reference, candidate, strict=True)
        ]
        tau, overlap = min(taus, default=1.0), min(overlaps, default=1.0)
        return Agreement(
            variant=variant,
            kendall_tau=tau,
            top_k_overlap=overlap,
            max_abs_diff=max(diffs, default=0.0),
            passed=tau >= self.min_kendall_tau and overlap >= self.min_top_k_overlap,
        )


@dataclass
class Selection:
    """What ``precision="auto"`` chose and why, kept on the backend for reports."""

    chosen: str
    reason: str
    agreements: list[Agreement] = field(default_factory=list)
    gate: FidelityGate = field(default_factory=FidelityGate)
    #: The file an earlier process's choice was read from (``None``: chosen now).
    remembered_from: str | None = None
    #: fp32 torch's pairs per second on the timed sample (``None``: speed not measured).
    reference_pairs_per_second: float | None = None
    #: The fidelity rule's tables on judged collections (``crossrank optimize --judged``),
    #: one per variant judged; ``None`` when no judged data was given.
    rule_report: str | None = None

    def describe(self) -> str:
        lines = [f"chose {self.chosen}: {self.reason}"]
        if self.reference_pairs_per_second is not None:
            lines.append(f"  fp32 torch here: {self.reference_pairs_per_second:.1f} pairs/s")
        if self.remembered_from is not None:
            lines.append(f"  (remembered from {self.remembered_from})")
        lines.extend(f"  {agreement.describe()}" for agreement in self.agreements)
        if self.rule_report is not None:
            lines.append("  the fidelity rule on judged collections:")
            lines.extend(f"    {line}" for line in self.rule_report.splitlines())
        return "\n".join(lines)
