"""Coalesce concurrent scoring requests into shared forward passes (optional, off by default).

A server handling many small rerank requests at once wastes the CPU on many small,
padded, one-request batches. A cross-encoder scores *pairs*, so pairs from different
queries can share one forward pass: requests arriving within ``max_wait_s`` of the first
one (or until ``max_pairs`` are waiting) are scored together by one worker thread, which
then hands each caller its own slice. Callers get a ``concurrent.futures.Future``, which
sync code waits on and async code awaits via ``asyncio.wrap_future`` without blocking the
loop. An error fails every request of the batch it happened in, and no other.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from crossrank.errors import ConfigurationError

PairScorer = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclass
class _Request:
    query: str
    texts: list[str]
    future: Future[list[float]] = field(default_factory=Future)


class MicroBatcher:
    """One worker thread that groups requests and scores them with ``score_pairs``."""

    def __init__(
        self, score_pairs: PairScorer, *, max_wait_s: float = 0.005, max_pairs: int = 256
    ) -> None:
        if not isinstance(max_wait_s, int | float) or max_wait_s < 0:
            raise ConfigurationError(f"max_wait_s must be a number >= 0, got {max_wait_s!r}")
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ConfigurationError(f"max_pairs must be a positive integer, got {max_pairs!r}")
        self._score_pairs = score_pairs
        self.max_wait_s = float(max_wait_s)
        self.max_pairs = max_pairs
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        #: Number of forward groups run and requests served (for tests and reports).
        self.groups_run = 0
        self.requests_served = 0

    def submit(self, query: str, texts: Sequence[str]) -> Future[list[float]]:
        """Queue one request; its future resolves to scores in the order of ``texts``."""
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        request = _Request(query, list(texts))
        if not request.texts:
            request.future.set_result([])
            return request.future
        self._ensure_worker()
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def _ensure_worker(self) -> None:
        if self._worker is not None:
            return
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="crossrank-micro-batcher", daemon=True
                )
                self._worker.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            pairs = len(first.texts)
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while pairs < self.max_pairs:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                pairs += len(item.texts)
            self._score_group(group)
            if stop:
                return

    def _score_group(self, group: list[_Request]) -> None:
        queries = [request.query for request in group for _ in request.texts]
        texts = [text for request in group for text in request.texts]
        try:
            scores = self._score_pairs(queries, texts)
        except BaseException as exc:
            for request in group:
                request.future.set_exception(exc)
            return
        self.groups_run += 1
        start = 0
        for request in group:
            end = start + len(request.texts)
            request.future.set_result(scores[start:end])
            self.requests_served += 1
            start = end
