"""Latency budgets: how deep to rerank so a call answers in time, learned as calls run.

The rule practitioners give is "set a latency budget first, then rerank as many candidates
as it allows" — and they tune that depth by hand for one machine and one load. Here the
engine does it per call. Every scoring call teaches a per-process :class:`CostModel` what a
request costs (a fixed part per backend call plus a part per character of query and text,
characters standing in for tokens); before scoring, the engine asks it how many of the
first-stage head fit the time left, scores them in chunks, and stops between chunks when
the next would overrun. Whatever was not scored keeps its first-stage place below the
reranked head. Under load calls get slower, the model learns that, and depth shrinks.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

#: Observations each model keeps; old ones fall out, so it follows a changing load.
HISTORY = 64
#: A call this many times slower or faster than predicted means the load changed.
SHIFT = 3.0
#: Pairs per backend call while a budget applies, when the backend names no batch size.
DEFAULT_CHUNK = 16
#: A chunk is sized to at most this share of the budget.
CHUNK_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """What a latency budget did to one call; attached to its report."""

    budget_ms: float
    #: Candidates whose every window was scored (the reranked head).
    reranked: int
    #: Candidates kept below the head in first-stage order.
    kept_in_first_stage_order: int
    predicted_ms: float | None
    scoring_ms: float
    #: True when scoring stopped early because the next chunk would not fit.
    deadline_hit: bool


class CostModel:
    """Predicts the milliseconds of one backend call from its characters; thread-safe.

    A least-squares line through recent (characters, milliseconds) observations, with a
    non-negative per-call intercept; with too little spread in sizes it falls back to the
    median ratio, which one slow outlier cannot move. Until it has seen a call it predicts
    nothing, and the engine then scores chunk by chunk, learning from the first.

    Three ways it could go stale are closed: the very first call is not learned from (it pays
    once for lazy loading and kernel warm-up); a call three times off the prediction starts
    the history over (the load changed); and each call the model turns away entirely
    relaxes its estimate a little (:meth:`relax`), so after a few a chunk is tried again and a
    machine that got faster is noticed.
    """

    def __init__(self, history: int = HISTORY) -> None:
        self._observations: deque[tuple[float, float]] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._first_seen = False
        self._optimism = 1.0

    def observe(self, characters: int, milliseconds: float) -> None:
        if characters <= 0 or milliseconds < 0:
            return
        with self._lock:
            if not self._first_seen:
                self._first_seen = True
                return
        expected = self._expected(characters)
        with self._lock:
            if expected and not 1 / SHIFT < milliseconds / expected < SHIFT:
                self._observations.clear()  # the machine's load changed: start over from here
            self._observations.append((float(characters), float(milliseconds)))
            self._optimism = 1.0

    def _expected(self, characters: int) -> float | None:
        fitted = self.coefficients()
        return None if fitted is None else fitted[0] + fitted[1] * characters

    def relax(self) -> None:
        """A call got nothing scored: trust the estimate a little less (down to a tenth)."""
        with self._lock:
            self._optimism = max(0.1, self._optimism * 0.8)

    @property
    def ready(self) -> bool:
        return bool(self._observations)

    def coefficients(self) -> tuple[float, float] | None:
        """``(ms per call, ms per character)``, or ``None`` before the first observation."""
        with self._lock:
            points = list(self._observations)
        if not points:
            return None
        count = len(points)
        mean_x = sum(x for x, _ in points) / count
        mean_y = sum(y for _, y in points) / count
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        if count >= 4 and spread > 0.05 * count * mean_x**2:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
            intercept = mean_y - slope * mean_x
            if slope > 0 and intercept >= 0:
                return intercept, slope
        return 0.0, statistics.median(y / x for x, y in points)

    def predict(self, chunk_characters: Sequence[int]) -> float | None:
        """Milliseconds for one call per chunk of the given sizes."""
        fitted = self.coefficients()
        if fitted is None:
            return None
        per_call, per_character = fitted
        with self._lock:
            optimism = self._optimism
        return optimism * sum(per_call + per_character * size for size in chunk_characters)


_MODELS: dict[tuple[str, str], CostModel] = {}
_MODELS_LOCK = threading.Lock()


def cost_model_for(backend: object) -> CostModel:
    """The process-wide model of one backend and model (shared by every reranker on it)."""
    key = (type(backend).__qualname__, str(getattr(backend, "model_name", None)))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = CostModel()
        return model


def chunk_size_of(backend: object) -> int:
    """Pairs per call under a budget: the backend's own batch size when it has one."""
    size = getattr(backend, "batch_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    return DEFAULT_CHUNK


def chunk_size_for(model: CostModel, mean_characters: float, target_ms: float, cap: int) -> int:
    """The most pairs (1 to ``cap``) one call can take and still be predicted within target.

    Chunks a fraction of the budget long keep the deadline check fine-grained: with a whole
    batch per call, a budget shorter than one batch could never be used at all.
    """
    size = 1
    for candidate in range(2, cap + 1):
        predicted = model.predict([round(candidate * mean_characters)])
        if predicted is None or predicted > target_ms:
            break
        size = candidate
    return size


def chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def growing_chunks(count: int, cap: int) -> list[range]:
    """1, 2, 4... pairs up to ``cap``: a cold model learns per-call and per-pair cost apart."""
    ranges: list[range] = []
    start, size = 0, 1
    while start < count:
        ranges.append(range(start, min(start + size, count)))
        start, size = start + size, min(size * 2, cap)
    return ranges


__all__ = [
    "BudgetOutcome",
    "CostModel",
    "chunk_size_for",
    "chunk_size_of",
    "chunks",
    "cost_model_for",
    "growing_chunks",
]
