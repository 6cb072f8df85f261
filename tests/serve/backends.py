"""Backends the serving tests need beyond tests/support: slow ones and gated ones."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.backends import KeywordBackend


class SlowKeywordBackend(KeywordBackend):
    """Keyword scores after a fixed delay, so requests overlap and the queue fills."""

    name = "slow-keyword"

    def __init__(self, delay_s: float = 0.05, pid_dir: str | None = None) -> None:
        super().__init__()
        self.delay_s = delay_s
        if pid_dir is not None:  # tells a test which process to kill
            (Path(pid_dir) / str(os.getpid())).touch()

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        time.sleep(self.delay_s)
        return super().score(query, texts)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        import asyncio

        return await asyncio.to_thread(self.score, query, list(texts))


class GatedKeywordBackend(KeywordBackend):
    """Cannot score until ``open`` is called: a model still loading."""

    name = "gated-keyword"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        return super().score(query, texts)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        import asyncio

        return await asyncio.to_thread(self.score, query, list(texts))
