"""pki_exporter.graph.budget: sliding windows, shared slots, slowing down after a 429, recovery.

Time is a fake clock: ``sleep`` advances it, so every wait is exact and instant.
"""

from __future__ import annotations

import threading

import pytest

from pki_exporter.graph.budget import (
    WINDOW,
    BudgetCancelled,
    BudgetExceeded,
    GraphBudget,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return False


def budget(
    requests: int, writes: int, t: FakeTime, waits: list[float] | None = None
) -> GraphBudget:
    return GraphBudget(
        requests,
        writes,
        clock=t.clock,
        sleep=t.sleep,
        on_wait=(waits.append if waits is not None else lambda _s: None),
    )


def test_slots_within_a_window_are_free() -> None:
    t = FakeTime()
    b = budget(10, 3, t)
    assert [b.try_take(write=True) for _ in range(3)] == [0.0, 0.0, 0.0]
    # The fourth write waits for the first to leave the window; reads still pass.
    assert b.try_take(write=True) == WINDOW
    assert [b.try_take(write=False) for _ in range(7)] == [0.0] * 7
    assert b.try_take(write=False) == WINDOW


def test_the_window_slides() -> None:
    t = FakeTime()
    b = budget(100, 2, t)
    assert b.try_take(True) == 0.0
    t.now += 5
    assert b.try_take(True) == 0.0
    t.now += 1
    assert b.try_take(True) == pytest.approx(14.0)  # the first leaves at 1000 + 20
    t.now = 1020.0
    assert b.try_take(True) == 0.0  # exactly 20 s later the first slot is free
    assert b.try_take(True) == pytest.approx(5.0)  # the second leaves at 1025


def test_acquire_waits_and_counts_the_wait() -> None:
    t = FakeTime()
    waits: list[float] = []
    b = budget(100, 2, t, waits)
    for _ in range(2):
        assert b.acquire(True, deadline=t.now + 100) == 0.0
    assert b.acquire(True, deadline=t.now + 100) == pytest.approx(WINDOW)
    assert waits == [pytest.approx(WINDOW)]
    assert t.sleeps == [pytest.approx(WINDOW)]


def test_no_window_ever_holds_more_than_the_budget() -> None:
    t = FakeTime()
    b = budget(7, 3, t)
    sent: list[tuple[float, bool]] = []
    for i in range(60):
        write = i % 2 == 0
        b.acquire(write, deadline=t.now + 1000)
        sent.append((t.now, write))
        t.now += 0.5
    for start, _ in sent:
        inside = [w for when, w in sent if start <= when < start + WINDOW]
        assert len(inside) <= 7
        assert sum(inside) <= 3


def test_a_slot_past_the_deadline_raises_and_takes_nothing() -> None:
    t = FakeTime()
    b = budget(1, 1, t)
    b.acquire(True, deadline=t.now + 1)
    with pytest.raises(BudgetExceeded) as raised:
        b.acquire(False, deadline=t.now + 19)
    assert raised.value.wait == WINDOW
    assert t.sleeps == []
    t.now += WINDOW
    assert b.try_take(False) == 0.0


def test_cancel_wakes_a_waiting_caller() -> None:
    b = GraphBudget(1, 1)
    b.acquire(True, deadline=float("inf"))
    outcome: list[str] = []

    def wait() -> None:
        try:
            b.acquire(True, deadline=float("inf"))
        except BudgetCancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=wait)
    thread.start()
    b.cancel()
    thread.join(10)
    assert outcome == ["cancelled"]


def test_a_429_pauses_everyone_for_its_retry_after() -> None:
    t = FakeTime()
    b = budget(100, 10, t)
    b.throttled(7.0)
    assert b.try_take(False) == pytest.approx(7.0)
    assert b.try_take(True) == pytest.approx(7.0)
    t.now += 7
    assert b.try_take(False) == 0.0


def test_a_429_without_retry_after_pauses_nobody_but_lowers_the_limits() -> None:
    t = FakeTime()
    b = budget(100, 10, t)
    b.throttled(None)
    assert b.try_take(False) == 0.0
    assert b.limits == (50, 5)


def test_a_429_halves_the_limits_then_they_recover_by_a_tenth_per_quiet_window() -> None:
    t = FakeTime()
    b = budget(900, 90, t)
    b.throttled(0.0)
    assert b.limits == (450, 45)
    # Several 429s of one burst (every worker got one) cut once per window.
    b.throttled(0.0)
    b.throttled(0.0)
    assert b.limits == (450, 45)
    t.now += WINDOW
    assert b.limits == (540, 54)
    t.now += 2 * WINDOW
    assert b.limits == (720, 72)
    t.now += 10 * WINDOW
    assert b.limits == (900, 90)


def test_repeated_429s_keep_cutting_down_to_a_tenth() -> None:
    t = FakeTime()
    b = budget(900, 90, t)
    for _ in range(8):
        b.throttled(0.0)
        t.now += WINDOW - 0.001  # each 429 within the window after the last quiet one
        b.throttled(0.0)
        t.now += 0.002
    assert b.limits == (90, 9)


def test_halved_limits_hold_back_requests() -> None:
    t = FakeTime()
    b = budget(4, 4, t)
    b.throttled(0.0)
    assert [b.try_take(False) for _ in range(3)] == [0.0, 0.0, WINDOW]


def test_writes_may_not_exceed_requests() -> None:
    with pytest.raises(ValueError):
        GraphBudget(10, 11)
