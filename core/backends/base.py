"""The one contract every scoring backend meets.

A backend turns (query, texts) into raw floats, one per text, in input order. It knows
nothing of candidates, ranks, deduplication or normalization: that is the engine's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Scores a query against texts. ``ascore`` must not block the event loop."""

    @property
    def name(self) -> str:
        """Short backend name recorded in every result (``"cross-encoder"``, ``"cohere"``...)."""
        ...

    @property
    def model_name(self) -> str | None:
        """The model id or path, for reports; ``None`` when not meaningful."""
        ...

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Raw relevance scores, ``len(texts)`` of them, in the order of ``texts``."""
        ...

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async twin of :meth:`score`."""
        ...


@runtime_checkable
class TokenWindowing(Protocol):
    """Optional capability: lets the engine cut long texts into windows the model can read.

    ``token_spans`` gives the character span of each token of ``text`` (special tokens
    excluded); ``window_token_budget`` is how many text tokens fit beside ``query`` in one
    model input, or ``None`` when the backend has no limit.
    """

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def window_token_budget(self, query: str) -> int | None: ...


class BaseBackend:
    """Convenience base: a blocking ``score`` gets an ``ascore`` that runs it off the loop.

    Local models release the GIL inside torch, so a worker thread is genuinely concurrent
    with the event loop; remote backends override ``ascore`` with a real async client.
    """

    name: str = "backend"

    @property
    def model_name(self) -> str | None:
        return None

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, list(texts))
