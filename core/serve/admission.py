"""A bounded admission queue: at most ``max_in_flight`` rerank, ``max_queue`` wait, the rest 429.

Queueing without a bound only turns overload into timeouts for everyone; refusing at once
with ``Retry-After`` lets a client (or a load balancer) go elsewhere or come back. All state
lives on the server's event loop, which is single-threaded, so counters need no lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The request was not admitted; answer 429."""


class Draining(Exception):
    """The server is shutting down and admits nothing new; answer 503."""


class AdmissionGate:
    """Admits up to ``max_in_flight + max_queue`` requests; runs ``max_in_flight`` at once."""

    def __init__(self, *, max_in_flight: int, max_queue: int) -> None:
        self.max_in_flight = max_in_flight
        self.capacity = max_in_flight + max_queue
        self._slots: asyncio.Semaphore | None = None
        self.admitted = 0
        self.running = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def run(self, work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """Run ``work`` once a slot is free; returns its result and the seconds it waited.

        Raises :class:`QueueFull` or :class:`Draining` without waiting when not admitted.
        """
        if self.draining:
            raise Draining()
        if self.admitted >= self.capacity:
            raise QueueFull()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
            self._idle = asyncio.Event()
        self.admitted += 1
        assert self._idle is not None
        self._idle.clear()
        arrived = time.perf_counter()
        try:
            async with self._slots:
                waited = time.perf_counter() - arrived
                self.running += 1
                try:
                    return await work(), waited
                finally:
                    self.running -= 1
        finally:
            self.admitted -= 1
            if self.admitted == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting and wait for admitted requests; ``False`` if time ran out first."""
        self.draining = True
        if self.admitted == 0 or self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
