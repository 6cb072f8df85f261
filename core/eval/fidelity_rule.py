"""The fidelity rule a faster variant must meet to stand in for full-precision scoring.

"nDCG@10 within 0.005 on every collection" is mostly a draw on collections of 30-100
queries: near-ties in the reference order flip under score errors far smaller than any
8-bit variant's (``benchmarks/precision_noise.py`` measured it). The rule here asks two things
that do not hinge on one lucky collection: the variant's nDCG@10 changes are small on
average over the collections, and no single collection's change is statistically
distinguishable from chance under a paired randomization test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crossrank.errors import InvalidInputError
from crossrank.eval.metrics import paired_tests

#: Largest mean over collections of |delta nDCG@10| against the reference.
MAX_MEAN_ABS_DELTA = 0.005
#: Significance level of the per-collection paired randomization test.
ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class CollectionDelta:
    collection: str
    queries: int
    delta: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


@dataclass(frozen=True, slots=True)
class FidelityVerdict:
    collections: tuple[CollectionDelta, ...]
    mean_abs_delta: float

    @property
    def passed(self) -> bool:
        return self.mean_abs_delta <= MAX_MEAN_ABS_DELTA and not any(
            row.significant for row in self.collections
        )

    @property
    def holm_p_values(self) -> tuple[float, ...]:
        """Each collection's p-value after Holm's correction for testing every collection.

        The rule as stated tests seven collections at 0.05 each, so a variant that changes
        nothing still fails about three times in ten by chance alone; Holm's step-down
        adjustment keeps that family-wise rate at 0.05. Reported beside the rule, which
        itself is unchanged.
        """
        order = sorted(range(len(self.collections)), key=lambda i: self.collections[i].p_value)
        adjusted = [1.0] * len(order)
        running = 0.0
        for rank, index in enumerate(order):
            scaled = (len(order) - rank) * self.collections[index].p_value
            running = max(running, min(1.0, scaled))
            adjusted[index] = running
        return tuple(adjusted)

    @property
    def passed_with_holm(self) -> bool:
        """The rule with Holm-corrected p-values (see :attr:`holm_p_values`)."""
        return self.mean_abs_delta <= MAX_MEAN_ABS_DELTA and all(
            p >= ALPHA for p in self.holm_p_values
        )

    def table(self) -> str:
        """One line per collection and the verdict, for benchmark output and gate reports."""
        lines = [
            f"{'collection':<18}{'queries':>8}{'delta nDCG@10':>15}{'p (paired)':>12}"
            f"{'p (Holm)':>10}"
        ]
        for row, holm in zip(self.collections, self.holm_p_values, strict=True):
            flag = "  significant" if row.significant else ""
            lines.append(
                f"{row.collection:<18}{row.queries:>8}{row.delta:>+15.4f}"
                f"{row.p_value:>12.3f}{holm:>10.3f}{flag}"
            )
        verdict = "passes" if self.passed else "fails"
        lines.append(
            f"mean |delta| {self.mean_abs_delta:.4f} (rule: <= {MAX_MEAN_ABS_DELTA}), "
            f"no collection significant at p < {ALPHA}: {verdict}"
        )
        holm_verdict = "passes" if self.passed_with_holm else "fails"
        lines.append(f"(with Holm's correction across {len(self.collections)}: {holm_verdict})")
        return "\n".join(lines)


def judge_fidelity(
    reference: Mapping[str, Mapping[str, float]],
    variant: Mapping[str, Mapping[str, float]],
    *,
    permutations: int = 10000,
    seed: int = 0,
) -> FidelityVerdict:
    """Judge ``variant`` against ``reference``: ``{collection: {query id: nDCG@10}}`` each."""
    missing = sorted(set(reference) ^ set(variant))
    if missing or not reference:
        raise InvalidInputError(
            f"reference and variant must cover the same collections; differing: {missing}"
        )
    rows = []
    for collection in sorted(reference):
        tested = paired_tests(
            reference[collection], variant[collection], permutations=permutations, seed=seed
        )
        rows.append(
            CollectionDelta(
                collection=collection,
                queries=int(tested["queries"]),
                delta=tested["mean_difference"],
                p_value=tested["p_randomization"],
            )
        )
    mean_abs = sum(abs(row.delta) for row in rows) / len(rows)
    return FidelityVerdict(collections=tuple(rows), mean_abs_delta=mean_abs)


__all__ = ["ALPHA", "MAX_MEAN_ABS_DELTA", "CollectionDelta", "FidelityVerdict", "judge_fidelity"]
