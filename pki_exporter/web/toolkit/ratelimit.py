"""`rate_limit`: the token bucket in front of every request but /healthz."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pki_exporter.web.toolkit.model import RateLimit


class RateLimiter:
    """A token bucket, as golang.org/x/time/rate's Limiter that the toolkit uses.

    It starts full (`burst` tokens) and gains one token every `interval` seconds, up to
    `burst`; a request takes one token or, when there is none, is answered 429. A burst
    of 0 refuses every request (as in Go).
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = limit.interval
        self._burst = float(limit.burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self._burst, self._tokens + elapsed / self._interval)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False
