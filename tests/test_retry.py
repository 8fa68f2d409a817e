"""The retry policy on its own: Retry-After forms and bounded backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pki_exporter.graph.retry import RetryPolicy, parse_retry_after, retry_deadline

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        (format_datetime(datetime(2026, 11, 26, 12, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        (format_datetime(datetime(2026, 11, 26, 11, 0, 0, tzinfo=UTC), usegmt=True), 0.0),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_backoff_grows_exponentially_within_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        for _ in range(50):
            delay = policy.backoff(retry, rng)
            assert ceiling / 2 <= delay <= ceiling


def test_retry_after_wins_over_backoff() -> None:
    assert RetryPolicy().delay(3, "12", NOW) == 12.0


@pytest.mark.parametrize(
    ("wait", "deadline", "timeout", "expected"),
    [
        (1.0, 101.6, 60.0, True),  # 0.6 s left after the wait: enough
        (1.0, 101.5, 60.0, False),  # exactly 0.5 s left: a request cut off, not sent
        (1.0, 101.2, 60.0, False),  # once "before the deadline": now a timeout it never was
        (0.0, 100.3, 0.2, True),  # a 0.2 s timeout needs only its own 0.2 s
        (0.0, 100.2, 0.2, False),
        (5.0, 104.0, 60.0, False),  # the wait itself passes the deadline
    ],
)
def test_a_retry_needs_time_to_be_answered(
    wait: float, deadline: float, timeout: float, expected: bool
) -> None:
    assert (100.0 + wait < retry_deadline(deadline, timeout)) is expected
