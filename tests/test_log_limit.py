"""Fallback warnings are throttled per reranker; suppressed repeats stay visible at DEBUG."""

from __future__ import annotations

import logging

import pytest

from crossrank import Reranker
from crossrank.log_limit import WarningThrottle
from tests.support.backends import FailingBackend
from tests.test_engine import QUERY, candidates


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_logs_once_then_reports_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttle = WarningThrottle(logging.getLogger("crossrank.test"), interval_s=60, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="crossrank.test"):
        for _ in range(5):
            throttle.warning("backend %s failed", "x")
            clock.now += 1
        clock.now += 60
        throttle.warning("backend %s failed", "x")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert warnings == [
        "backend x failed",
        "backend x failed [4 similar warning(s) in the last 60 s went to DEBUG]",
    ]
    assert debug == ["backend x failed"] * 4


def test_negative_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="-1"):
        WarningThrottle(logging.getLogger("x"), interval_s=-1)


def test_every_fallback_is_flagged_but_only_the_first_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reranker = Reranker(FailingBackend(), top_n=3)
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        results = [reranker.rerank(QUERY, candidates()) for _ in range(10)]
    assert all(result.report.status == "fallback" for result in results)
    assert all("scoring exploded" in (result.report.error or "") for result in results)
    assert sum("first-stage order" in record.getMessage() for record in caplog.records) == 1
