"""Warnings that cannot flood a log: the first of a burst, then one per interval with a count.

A backend outage makes every request fall back. Each result is flagged (``status``,
``error``), so nothing is lost by not logging each one; one WARNING line per request at a
hundred requests a second would bury everything else in the log. Suppressed repeats go to
DEBUG, so they are still there for whoever asks for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class WarningThrottle:
    """Emit a warning at most once per ``interval_s``; say how many were held back meanwhile."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_emitted: float | None = None
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            due = self._last_emitted is None or now - self._last_emitted >= self._interval_s
            if due:
                suppressed, self._suppressed = self._suppressed, 0
                self._last_emitted = now
            else:
                self._suppressed += 1
        if not due:
            self._logger.debug(message, *args)
            return
        if suppressed:
            message += " [%d similar warning(s) in the last %.0f s went to DEBUG]"
            args = (*args, suppressed, self._interval_s)
        self._logger.warning(message, *args)
