"""Logging that a flood of one message cannot drown: each distinct message is rate-limited.

A message is logged the first time; repeats within :data:`INTERVAL` are
counted and reported as "N more like this" when the next one comes after the
interval, or when :meth:`RepeatedLog.flush` is called (the daemon does every
interval). A distinct message, a real bug among many hang-ups say, is never
hidden behind another.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RepeatedLog", "INTERVAL"]

#: Seconds during which repeats of one message are counted, not logged.
INTERVAL = 60.0


class RepeatedLog:
    """Log through ``logger``, each distinct message (and exception type) at most once per interval."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        #: (level, message, exception type) -> [when last logged, repeats not logged since].
        self._seen: dict[tuple, list] = {}

    def log(self, level: int, message: str, *args, exc_info: BaseException | None = None) -> None:
        key = (level, message % args if args else message,
               type(exc_info) if exc_info is not None else None)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return
        if seen is not None and seen[1]:
            self._report(key, seen[1])
        self._seen[key] = [now, 0]
        self.logger.log(level, message, *args, exc_info=exc_info)

    def warning(self, message: str, *args, exc_info: BaseException | None = None) -> None:
        self.log(logging.WARNING, message, *args, exc_info=exc_info)

    def error(self, message: str, *args, exc_info: BaseException | None = None) -> None:
        self.log(logging.ERROR, message, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Report the repeats of every message whose interval has ended."""
        now = time.monotonic()
        for key, seen in list(self._seen.items()):
            if now - seen[0] >= self.interval:
                if seen[1]:
                    self._report(key, seen[1])
                del self._seen[key]

    def _report(self, key: tuple, count: int) -> None:
        level, text, kind = key
        what = f" ({kind.__name__})" if kind is not None else ""
        self.logger.log(level, "%d more like this in %g s: %s%s", count, self.interval, text,
                        what)
