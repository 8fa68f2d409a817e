"""pki_exporter.graph.budget: sliding windows, shared slots, slowing down after a 429, recovery,
and windows that hold as Graph counts them: by arrival.

Time is a fake clock: ``sleep`` advances it, so every wait is exact and instant.
"""

from __future__ import annotations

import heapq
import random
import threading

import pytest

from pki_exporter.graph.budget import (
    WINDOW,
    BudgetCancelled,
    BudgetExceeded,
    GraphBudget,
    Slot,
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


def take(b: GraphBudget, write: bool) -> float:
    """`try_take` for a request answered at once: 0.0 (its slot released now) or the delay."""
    delay, slot = b.try_take(write)
    if slot is not None:
        b.release(slot)
    return delay


def test_slots_within_a_window_are_free() -> None:
    t = FakeTime()
    b = budget(10, 3, t)
    assert [take(b, write=True) for _ in range(3)] == [0.0, 0.0, 0.0]
    # The fourth write waits for the first to leave the window; reads still pass.
    assert take(b, write=True) == WINDOW
    assert [take(b, write=False) for _ in range(7)] == [0.0] * 7
    assert take(b, write=False) == WINDOW


def test_the_window_slides() -> None:
    t = FakeTime()
    b = budget(100, 2, t)
    assert take(b, True) == 0.0
    t.now += 5
    assert take(b, True) == 0.0
    t.now += 1
    assert take(b, True) == pytest.approx(14.0)  # the first leaves at 1000 + 20
    t.now = 1020.0
    assert take(b, True) == 0.0  # exactly 20 s later the first slot is free
    assert take(b, True) == pytest.approx(5.0)  # the second leaves at 1025


def test_acquire_waits_and_counts_the_wait() -> None:
    t = FakeTime()
    waits: list[float] = []
    b = budget(100, 2, t, waits)
    for _ in range(2):
        slot = b.acquire(True, deadline=t.now + 100)
        assert slot.waited == 0.0
        b.release(slot)
    assert b.acquire(True, deadline=t.now + 100).waited == pytest.approx(WINDOW)
    assert waits == [pytest.approx(WINDOW)]
    assert t.sleeps == [pytest.approx(WINDOW)]


def test_a_slot_is_held_while_in_flight_and_a_window_after_its_answer() -> None:
    """Graph counts a request when it arrives, at the latest when its answer leaves: the slot
    is free a full window after the answer was seen, not after the request was sent."""
    t = FakeTime()
    b = budget(1, 1, t)
    _, slot = b.try_take(True)
    assert slot is not None
    # In flight: its answer may come any moment, so the earliest it could be free is now + 20.
    assert b.try_take(False) == (WINDOW, None)
    t.now += 5.0
    assert b.try_take(False) == (WINDOW, None)
    b.release(slot)  # answered 5 s after it was sent
    t.now += 19.0
    assert b.try_take(False) == (pytest.approx(1.0), None)
    t.now += 1.0  # 1025: 20 s after the answer, 25 s after the send
    delay, second = b.try_take(False)
    assert (delay, second is not None) == (0.0, True)


def test_a_waiting_caller_waits_for_an_answer_in_flight() -> None:
    """`acquire` looks again when the earliest moment has passed and waits on: a slot
    answered 3 s after a waiter started leaves 23 s after it started, and not sooner."""
    t = FakeTime()
    in_flight: list[Slot] = []
    answered_at = t.now + 3.0

    def sleep(seconds: float) -> bool:  # the answer is seen while the second caller waits
        t.sleeps.append(seconds)
        end = t.now + seconds
        if in_flight and end >= answered_at:
            t.now = answered_at
            b.release(in_flight.pop())
        t.now = end
        return False

    b = GraphBudget(1, 1, clock=t.clock, sleep=sleep)
    in_flight.append(b.acquire(True, deadline=t.now + 100))
    second = b.acquire(False, deadline=t.now + 100)
    assert t.now == pytest.approx(1000.0 + 3.0 + WINDOW)
    assert second.waited == pytest.approx(3.0 + WINDOW)
    assert t.sleeps == [pytest.approx(WINDOW), pytest.approx(3.0)]


def test_a_slot_released_twice_leaves_once() -> None:
    t = FakeTime()
    b = budget(2, 2, t)
    slot = b.acquire(True, deadline=t.now + 1)
    b.release(slot)
    b.release(slot)
    assert take(b, True) == 0.0
    assert take(b, True) == WINDOW


def test_a_slot_given_back_leaves_the_windows_at_once() -> None:
    """A retry that found no time left sends nothing: its slot is not spent."""
    t = FakeTime()
    b = budget(2, 1, t)
    slot = b.acquire(True, deadline=t.now + 1)
    assert take(b, True) == WINDOW  # held while the caller decides
    b.give_back(slot)
    b.give_back(slot)
    b.release(slot)  # neither a second give-back nor a release counts it again
    assert take(b, True) == 0.0
    assert take(b, False) == 0.0  # two answered requests now fill the window of 2
    assert take(b, False) == WINDOW


def test_no_window_ever_holds_more_than_the_budget() -> None:
    t = FakeTime()
    b = budget(7, 3, t)
    sent: list[tuple[float, bool]] = []
    for i in range(60):
        write = i % 2 == 0
        b.release(b.acquire(write, deadline=t.now + 1000))
        sent.append((t.now, write))
        t.now += 0.5
    for start, _ in sent:
        inside = [w for when, w in sent if start <= when < start + WINDOW]
        assert len(inside) <= 7
        assert sum(inside) <= 3


def busiest(times: list[float], window: float = WINDOW) -> int:
    """The most times in any ``(t - window, t]``: how Graph's sliding window counts."""
    ordered = sorted(times)
    best = left = 0
    for right, when in enumerate(ordered):
        while ordered[left] <= when - window:
            left += 1
        best = max(best, right - left + 1)
    return best


def graph_arrivals(
    requests: int, writes: int, *, release_at_send: bool, seed: int, total: int = 1200
) -> tuple[list[float], list[float], float]:
    """Six workers send through one budget as fast as it lets them, on a fake clock; each
    request arrives 0-1.5 s after it was sent (network jitter, a TLS handshake, a retried
    connection) and its answer is seen 0.05-0.6 s after it arrived. Returns the arrival
    times of every request and of the writes, and when the last answer was seen.

    ``release_at_send`` releases each slot the moment it is taken: a window measured at
    send time, the rule that let 31 of 30 POSTs arrive within 20 s."""
    rng = random.Random(seed)
    t = FakeTime()
    b = budget(requests, writes, t)
    events: list[tuple[float, int, bool, Slot | None]] = []
    sequence = 0

    def push(when: float, write: bool, slot: Slot | None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (when, sequence, write, slot))

    for _ in range(6):
        push(t.now, rng.random() < 0.4, None)
    arrivals: list[float] = []
    write_arrivals: list[float] = []
    last_seen = t.now
    while events:
        t.now, _, write, answered = heapq.heappop(events)
        if answered is not None:  # an answer seen: release, and this worker sends the next
            if not release_at_send:
                b.release(answered)
            last_seen = t.now
            if len(arrivals) < total:
                push(t.now, rng.random() < 0.4, None)
            continue
        delay, slot = b.try_take(write)
        if slot is None:
            push(t.now + delay, write, None)
            continue
        if release_at_send:
            b.release(slot)
        arrived = t.now + rng.uniform(0.0, 1.5)
        arrivals.append(arrived)
        if write:
            write_arrivals.append(arrived)
        push(arrived + rng.uniform(0.05, 0.6), write, slot)
    return arrivals, write_arrivals, last_seen - 1000.0


@pytest.mark.parametrize("seed", range(5))
def test_no_full_window_of_arrivals_holds_more_than_the_budget(seed: int) -> None:
    """As Graph counts: by arrival, in every 20 s. 1,200 requests of six workers with
    jittered arrivals never put more than 60 (15 writes) in any 20 s at Graph, and the
    budget still sends close to its limit: at most a round trip longer per window."""
    arrivals, writes, elapsed = graph_arrivals(60, 15, release_at_send=False, seed=seed)
    assert len(arrivals) >= 1200
    assert busiest(arrivals) <= 60
    assert busiest(writes) <= 15
    assert busiest(writes) == 15  # the writes' limit is reached, not merely respected
    windows = max(len(arrivals) / 60, len(writes) / 15)
    assert elapsed < windows * (WINDOW + 2.1)


def test_a_window_measured_at_send_time_lets_arrivals_exceed_the_budget() -> None:
    """The check above has teeth: the same traffic with slots counted from their send
    (the old rule) puts more than the limit into some 20 s of arrivals."""
    over = [
        busiest(writes) > 15 or busiest(arrivals) > 60
        for arrivals, writes, _ in (
            graph_arrivals(60, 15, release_at_send=True, seed=seed) for seed in range(5)
        )
    ]
    assert all(over)


def test_a_slot_past_the_deadline_raises_and_takes_nothing() -> None:
    t = FakeTime()
    b = budget(1, 1, t)
    b.release(b.acquire(True, deadline=t.now + 1))
    with pytest.raises(BudgetExceeded) as raised:
        b.acquire(False, deadline=t.now + 19)
    assert raised.value.wait == WINDOW
    assert t.sleeps == []
    t.now += WINDOW
    assert take(b, False) == 0.0


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
    assert take(b, False) == pytest.approx(7.0)
    assert take(b, True) == pytest.approx(7.0)
    t.now += 7
    assert take(b, False) == 0.0


def test_a_429_without_retry_after_pauses_nobody_but_lowers_the_limits() -> None:
    t = FakeTime()
    b = budget(100, 10, t)
    b.throttled(None)
    assert take(b, False) == 0.0
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
    assert [take(b, False) for _ in range(3)] == [0.0, 0.0, WINDOW]


def test_writes_may_not_exceed_requests() -> None:
    with pytest.raises(ValueError):
        GraphBudget(10, 11)
