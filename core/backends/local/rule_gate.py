"""``crossrank optimize --judged``: the variant a server loads must also meet the fidelity rule.

``precision="auto"`` checks rankings with a per-query gate on a small unjudged sample, cheap
enough to run at start-up. Where the user has judged queries (BEIR folders), ``optimize``
can afford the stronger test: the fidelity rule (:mod:`crossrank.eval.fidelity_rule`) on
every judged query's BM25 top 30. A chosen variant that fails it is struck from the
candidates and auto chooses again among the rest, until one passes or fp32, the reference,
remains. The record a serving process loads then carries the rule's tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crossrank.backends.local import auto
from crossrank.backends.local.fidelity import Selection
from crossrank.backends.local.variants import FP32_TORCH, variant_from_label

if TYPE_CHECKING:
    from crossrank.backends.local.backend import CrossEncoderBackend


def choose_within_rule(
    backend: CrossEncoderBackend,
    judged: Sequence[str | Path],
    *,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Selection:
    """``backend``'s auto choice (it must be loaded), re-chosen until the chosen variant
    meets the fidelity rule on ``judged``; the result is remembered as auto's choice."""
    from crossrank.backends.local.remembered import save_choice
    from crossrank.eval.fidelity_check import judge_scorers

    selection = backend.selection
    if selection is None:
        raise ValueError("choose_within_rule needs a loaded precision='auto' backend")
    sample = backend.auto.sample()
    root, key, candidates = auto.choice_record(backend, device, auto.sample_digest(sample))
    reference = _remembering(backend.sibling(FP32_TORCH).score)
    struck: list[str] = []
    tables: list[str] = []
    while selection.chosen != FP32_TORCH.label:
        chosen = auto.load_candidate(backend, variant_from_label(selection.chosen))
        if progress is not None:
            progress(f"judging {selection.chosen} against fp32 on {len(judged)} collection(s)")
        verdict = judge_scorers(
            judged, reference=reference, variant=chosen.score, progress=progress
        )
        tables.append(f"{selection.chosen}:\n{verdict.table()}")
        if verdict.passed:
            break
        struck.append(selection.chosen)
        remaining = [candidate for candidate in candidates if candidate.label not in struck]
        selection = auto.measure_and_choose(backend, sample, remaining)
    reason = selection.reason
    if struck:
        reason += f"; failed the fidelity rule on judged data: {', '.join(struck)}"
    selection = dataclasses.replace(
        selection,
        reason=reason,
        rule_report="\n".join(tables) if tables else "fp32 is the reference: nothing to judge",
        remembered_from=None,
    )
    if key is not None:
        save_choice(root, key, selection)
    return selection


def _remembering(
    score: Callable[[str, list[str]], list[float]],
) -> Callable[[str, list[str]], list[float]]:
    """``score`` with its answers kept: fp32 ranks the same candidates for every variant
    judged, and it is the slowest scorer of all."""
    answers: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def remembered(query: str, texts: list[str]) -> list[float]:
        key = (query, tuple(texts))
        if key not in answers:
            answers[key] = score(query, texts)
        return answers[key]

    return remembered


__all__ = ["choose_within_rule"]
