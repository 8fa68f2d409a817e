"""The retry policy: which answers are worth another try, and how long to wait first.

Kept apart from the HTTP code so that it can be read (and tested) on its own. It needs
three things that general-purpose retry libraries model awkwardly together: Graph's
``Retry-After`` (seconds or an HTTP date), a deadline shared by every request of one
refresh, and jittered exponential backoff when Graph gives no hint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

MIN_ATTEMPT_SECONDS = 0.5
"""A retry is sent only when, after its wait, more than this much of the refresh's deadline
is left (or more than the request timeout, when that is shorter). A request cut off at once
could not be answered: it would only turn the failure Graph gave (a 429, a 504) into a
`timeout`, and spend one more request of the budget."""

RETRY_STATUSES = frozenset({429, 500, 503, 504})
"""Throttled (429; Intune's query broker throttles with a 500 and no Retry-After) or
unavailable (503, 504): worth a bounded, backed-off retry. Other answers are final."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    """Attempts per request, the first one included."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0
    """A Retry-After longer than this is not waited for: the refresh fails as throttled."""

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with "equal jitter" for the ``retry``-th retry (1-based): a
        uniform draw from the upper half of the exponential step, so that workers spread out
        without any of them retrying at once."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return (rng or random).uniform(ceiling / 2, ceiling)

    def delay(
        self, retry: int, retry_after: str | None, now: float, rng: random.Random | None = None
    ) -> float:
        """How long to wait before the ``retry``-th retry, honouring Retry-After when given."""
        hinted = parse_retry_after(retry_after, now)
        if hinted is not None:
            return hinted
        return self.backoff(retry, rng)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def retry_deadline(deadline: float, timeout: float) -> float:
    """The last moment a retry may be sent under the refresh's ``deadline``: one sent at it
    or later would have no more than ``MIN_ATTEMPT_SECONDS`` (or than ``timeout``, when
    that is shorter) to be answered."""
    return deadline - min(timeout, MIN_ATTEMPT_SECONDS)
