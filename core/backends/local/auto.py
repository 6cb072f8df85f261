"""``precision="auto"``: the fastest variant *on this machine* whose ranking agrees with fp32.

Which variant is fastest depends on the CPU: on an AVX-512 VNNI Xeon torch int8 ran at 3x
``predict``, on an AVX2-only EPYC at 0.06x. So nothing here trusts a speed table. Each
candidate (:func:`~crossrank.backends.local.variants.auto_candidates`, which already leaves
out what this CPU cannot run fast) is loaded and timed on a short sample of pairs against
fp32 torch in the same process; one that is not at least :data:`MIN_SPEEDUP` times faster is
dropped. The fast ones then score the fidelity sample, fastest first, until one passes the
:class:`~crossrank.backends.local.fidelity.FidelityGate`: that one wins (fp32 when none
does), so auto is never slower than fp32 as measured here, and the slower candidates are
never scored on the whole sample.

Timing interleaves the variants (A B C A B C ...) and keeps each one's best round, so load
from other jobs hits them alike. The first start is bounded: the timed sample is
:data:`SPEED_PAIRS` pairs, ONNX artifacts
are built once per machine and cached, compiled kernels are cached by inductor, and the
choice itself is remembered on disk under the CPU's features
(:mod:`crossrank.backends.local.remembered`), so later processes, or a server after
``crossrank optimize``, only load files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crossrank.backends.local.fidelity import Agreement, Selection
from crossrank.backends.local.variants import (
    FP32_TORCH,
    Variant,
    auto_candidates,
    variant_from_label,
)
from crossrank.errors import ConfigurationError, ModelLoadError

if TYPE_CHECKING:
    from crossrank.backends.local.backend import CrossEncoderBackend

#: A candidate must beat fp32 torch by this factor in auto's own timing to be worth any
#: ranking change; below it, noise on a shared CPU could trade fidelity for nothing.
MIN_SPEEDUP = 1.1
#: Pairs in the timed sample (the first pairs of the fidelity sample), and timed runs of it
#: after one warm-up; the fastest run counts, since interference only ever slows a run.
SPEED_PAIRS = 32
SPEED_RUNS = 3

# What makes a candidate unavailable here, rather than an error for the caller.
_CANDIDATE_FAILURES = (ImportError, ModelLoadError, ConfigurationError, RuntimeError)

Sample = list[tuple[str, Sequence[str]]]


def sample_digest(sample: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Identity of a ranking sample, for registry and on-disk keys."""
    return hashlib.sha256(
        json.dumps([[q, list(t)] for q, t in sample]).encode("utf-8", "surrogatepass")
    ).hexdigest()


def select_variant(backend: CrossEncoderBackend, device: str) -> Selection:
    """The choice for ``backend``'s model on ``device``: from this process's registry, from
    disk, or measured now. Many rerankers on one model choose once."""
    sample = backend.auto.sample()
    digest = sample_digest(sample)
    key = ("auto-precision", backend.source, device, backend.auto.fidelity_gate, digest)
    return backend._registry.get_or_load(  # type: ignore[no-any-return]
        key, lambda: remembered_or_measured(backend, device, sample, digest)
    )


def remembered_or_measured(
    backend: CrossEncoderBackend, device: str, sample: Sample, digest: str
) -> Selection:
    """An earlier process's choice for exactly these inputs on this CPU, else a fresh one."""
    from crossrank.backends.local.remembered import load_choice, save_choice

    root, key, candidates = choice_record(backend, device, digest)
    labels = [candidate.label for candidate in candidates]
    if key is not None:
        remembered = load_choice(root, key)
        if (
            remembered is not None
            and remembered.chosen in labels
            and _still_runs_as_chosen(backend, remembered)
        ):
            return remembered
    selection = measure_and_choose(backend, sample, candidates)
    if key is not None:
        save_choice(root, key, selection)
    return selection


def choice_record(
    backend: CrossEncoderBackend, device: str, digest: str
) -> tuple[Path, str | None, list[Variant]]:
    """Where a choice for ``backend`` on ``device`` is remembered: the cache root, the key
    (``None``: the model is not pinned) and the candidates the key was built from."""
    from crossrank.backends.local.onnx_export import cache_root
    from crossrank.backends.local.remembered import choice_key

    root = cache_root(backend.execution.cache_dir)
    candidates = auto_candidates(device, compiled=backend.execution.compile)
    source = backend.source
    key = choice_key(
        model=source.model,
        revision=source.revision,
        device=device,
        settings={"max_length": source.max_length, "label_index": source.label_index},
        gate=backend.auto.fidelity_gate,
        sample_digest=digest,
        candidates=[candidate.label for candidate in candidates],
    )
    return root, key, candidates


def _still_runs_as_chosen(backend: CrossEncoderBackend, remembered: Selection) -> bool:
    """Whether a remembered choice still loads the way it did when it was chosen.

    A torch int8 choice was made compiled; on a machine that has since lost its C++
    compiler it would run eager, behind bf16, so the choice is made afresh instead. The
    check loads the variant, which the load that follows then reuses from the registry.
    """
    try:
        load_candidate(backend, variant_from_label(remembered.chosen))
    except _CANDIDATE_FAILURES:
        return False
    return True


def load_candidate(backend: CrossEncoderBackend, variant: Variant) -> CrossEncoderBackend:
    """A loaded sibling for ``variant``, or an error when it cannot run as auto lists it."""
    sibling = backend.sibling(variant)
    sibling.load()  # torch int8 compiles and warms up here, so a failure shows now
    if sibling.compile_fell_back:
        # Listed for its compiled speed; eager, it is behind the candidates after it.
        raise RuntimeError("torch.compile failed; eager int8 is slower than bf16")
    return sibling


def measure_throughput(backend: CrossEncoderBackend, queries: list[str], texts: list[str]) -> float:
    """Pairs per second of one timed run of ``backend`` on these pairs."""
    started = time.perf_counter()
    backend.score_pairs(queries, texts)
    return len(texts) / max(time.perf_counter() - started, 1e-9)


def interleaved_speeds(
    backends: dict[str, CrossEncoderBackend], queries: list[str], texts: list[str]
) -> dict[str, float]:
    """Each backend's best pairs/s over :data:`SPEED_RUNS` rounds, timed in turn (A B C A B
    C ...) after one warm-up each, so load from other jobs drifting over the measurement
    hits every variant alike instead of favouring whichever ran in a quiet moment."""
    for backend in backends.values():
        backend.score_pairs(queries, texts)
    best = dict.fromkeys(backends, 0.0)
    for _ in range(SPEED_RUNS):
        for label, backend in backends.items():
            best[label] = max(best[label], measure_throughput(backend, queries, texts))
    return best


def measure_and_choose(
    backend: CrossEncoderBackend, sample: Sample, candidates: list[Variant]
) -> Selection:
    """Time every candidate against fp32 here, then check rankings fastest first and stop at
    the first that passes (fp32 when none does): slower candidates need no fidelity check."""
    gate = backend.auto.fidelity_gate
    pairs = [(query, text) for query, texts in sample for text in texts][:SPEED_PAIRS]
    timed_queries, timed_texts = [q for q, _ in pairs], [t for _, t in pairs]
    reference_backend = backend.sibling(FP32_TORCH)
    rows: list[Agreement] = []
    loaded = {FP32_TORCH.label: reference_backend}
    for candidate in candidates:
        if candidate == FP32_TORCH:
            continue
        try:
            loaded[candidate.label] = load_candidate(backend, candidate)
            loaded[candidate.label].score_pairs(timed_queries[:1], timed_texts[:1])
        except _CANDIDATE_FAILURES as exc:
            loaded.pop(candidate.label, None)
            rows.append(_unchecked(candidate, f"unavailable: {exc}"))
    speeds = interleaved_speeds(loaded, timed_queries, timed_texts)
    reference_speed = speeds.pop(FP32_TORCH.label)
    fast: list[tuple[Variant, CrossEncoderBackend, float]] = []
    for candidate in candidates:
        if candidate.label not in speeds:
            continue
        sibling, speed = loaded[candidate.label], speeds[candidate.label]
        if speed / reference_speed < MIN_SPEEDUP:
            note = f"not faster than fp32 on this CPU (needs {MIN_SPEEDUP}x)"
            rows.append(_unchecked(candidate, note, speed, reference_speed))
        else:
            fast.append((candidate, sibling, speed))
    fast.sort(key=lambda item: -item[2])
    reference: list[list[float]] | None = None
    chosen: Agreement | None = None
    for candidate, sibling, speed in fast:
        if chosen is not None:
            note = "not checked: a faster variant passed"
            rows.append(_unchecked(candidate, note, speed, reference_speed))
            continue
        if reference is None:
            reference = [reference_backend.score(query, texts) for query, texts in sample]
        scores = [sibling.score(query, texts) for query, texts in sample]
        agreement = gate.measure(candidate.label, reference, scores)
        speedup = speed / reference_speed
        rows.append(dataclasses.replace(agreement, pairs_per_second=speed, speedup=speedup))
        if agreement.passed:
            chosen = rows[-1]
    # Fastest first (unavailable last), so the first passing row is the one chosen.
    rows.sort(key=lambda row: -(row.pairs_per_second or 0.0))
    if chosen is None:
        return Selection(
            chosen=FP32_TORCH.label,
            reason="no faster variant met the fidelity gate; fp32 is the reference",
            agreements=rows,
            gate=gate,
            reference_pairs_per_second=reference_speed,
        )
    return Selection(
        chosen=chosen.variant,
        reason=(
            f"fastest candidate on this CPU ({chosen.speedup:.2f}x fp32 torch on "
            f"{len(timed_texts)} timed pairs) whose ranking agrees with the fp32 reference "
            f"on {len(sample)} sample queries (tau >= {gate.min_kendall_tau}, "
            f"top-{gate.top_k} overlap >= {gate.min_top_k_overlap})"
        ),
        agreements=rows,
        gate=gate,
        reference_pairs_per_second=reference_speed,
    )


def _unchecked(
    candidate: Variant, note: str, speed: float | None = None, reference: float | None = None
) -> Agreement:
    """A row for a candidate whose ranking was not checked, and why."""
    speedup = speed / reference if speed is not None and reference else None
    return Agreement(
        candidate.label, 0.0, 0.0, float("inf"), False, note, pairs_per_second=speed,
        speedup=speedup,
    )  # fmt: skip
