"""A tenant's Graph request budget: sliding 20 s windows shared by all its CA workers.

Microsoft documents, for every Intune area, at most 1,000 requests of any method and 100
POST/PUT/PATCH/DELETE per 20 s for one app in one tenant (the leaf action is a POST). A
refresh that sends pages as fast as they come is throttled within seconds on a large
tenant, so every Graph request of a tenant takes a slot here first: at most
``requests_per_20s`` in any 20 s, of which at most ``writes_per_20s`` writes.

Graph counts a request when it *arrives*, and the exporter only knows when it sent one:
the two differ by the network's latency and jitter, a TLS handshake, a connection that
was retried. A window measured at send time lets the first request of a window arrive
late and the first of the next arrive early, and one more than the limit lands in some
20 s of Graph's. So a slot is held from the moment it is taken until ``WINDOW`` seconds
after the request's answer (or its failure) was seen: the request arrived before its
answer left, so every request sent after the slot is free arrives more than ``WINDOW``
after it did. The margin is each request's own round trip, measured rather than guessed.
While a request is in flight its slot is held; a caller waiting for it sleeps until the
earliest moment it could be free (``WINDOW`` from now) and looks again.

A 429 that still comes means someone else (another app of the same tenant) spends the
tenant-wide limit. The budget then slows down: every worker of the tenant pauses until the
``Retry-After`` has passed (without one, the worker that got it backs off by itself), and the limits in force
are halved (at most once per ``WINDOW``, down to a tenth of the configured ones). They
recover by a tenth of the configured limits for every full window without a 429, so a
single 429 costs about 100 s of half speed, and a tenant that keeps being throttled stays
slow.

Time is injected (``clock``, ``sleep``) so that the arithmetic is tested without waiting.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 20.0
"""Seconds of one window of Graph's documented Intune limits."""
MIN_FACTOR = 0.1
STEP = 0.1
"""Share of the configured limits regained for every full window without a 429."""


class BudgetExceeded(Exception):
    """Waiting for a slot would pass the caller's deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the tenant's graph_budget has no slot for {wait:.1f}s")
        self.wait = wait


class BudgetCancelled(Exception):
    """The exporter is stopping while a request waited for its slot."""


@dataclass(eq=False, slots=True)
class Slot:
    """One request's place in the windows, held until `GraphBudget.release` plus ``WINDOW``."""

    write: bool
    waited: float = 0.0
    """Seconds the caller waited for it."""
    released: bool = False


class _Held:
    """The slots of one limit (all requests, or writes): those answered, by the moment they
    leave the window (a heap), and how many are still in flight."""

    __slots__ = ("ends", "in_flight")

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.in_flight = 0

    def expire(self, now: float) -> None:
        ends = self.ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)

    def free_at(self, limit: int, now: float) -> float:
        """The earliest moment fewer than ``limit`` slots may be held (``now`` if they are).

        A slot in flight leaves ``WINDOW`` after its answer, so at ``now + WINDOW`` at the
        earliest: a caller waiting for it looks again then, and waits on if it is later."""
        excess = len(self.ends) + self.in_flight - limit + 1
        if excess <= 0:
            return now
        leaving = heapq.nsmallest(excess, self.ends)
        leaving += [now + WINDOW] * min(excess, self.in_flight)
        leaving.sort()
        return leaving[excess - 1]


class GraphBudget:
    """Slots for one tenant's Graph requests; thread-safe, O(log n) per request."""

    def __init__(
        self,
        requests_per_window: int,
        writes_per_window: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], bool] | None = None,
        on_wait: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        if not 1 <= writes_per_window <= requests_per_window:
            raise ValueError("budget: need 1 <= writes_per_window <= requests_per_window")
        self.requests_per_window = requests_per_window
        self.writes_per_window = writes_per_window
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._on_wait = on_wait
        self._lock = threading.Lock()
        self._all = _Held()
        self._writes = _Held()
        self._factor = 1.0
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._quiet_since = clock()

    # -- what a caller uses ------------------------------------------------------------------

    def acquire(self, write: bool, deadline: float) -> Slot:
        """Take a slot, waiting as long as the windows require. The caller sends its request
        and then, whatever came of it, calls `release` with the slot.

        Raises BudgetExceeded when the slot would come after ``deadline`` (monotonic), and
        BudgetCancelled when ``cancel()`` is called while waiting.
        """
        waited = 0.0
        while True:
            delay, slot = self.try_take(write)
            if slot is not None:
                break
            now = self._clock()
            if now + delay > deadline:
                self._count(waited)
                raise BudgetExceeded(delay)
            if self._sleep(delay):
                self._count(waited)
                raise BudgetCancelled
            waited += self._clock() - now
        self._count(waited)
        slot.waited = waited
        return slot

    def release(self, slot: Slot) -> None:
        """The request's answer (or its failure) was seen now: its slot leaves the window
        ``WINDOW`` seconds from now. Releasing a slot twice changes nothing."""
        with self._lock:
            if slot.released:
                return
            slot.released = True
            end = self._clock() + WINDOW
            for held in (self._all, self._writes) if slot.write else (self._all,):
                held.in_flight -= 1
                heapq.heappush(held.ends, end)

    def give_back(self, slot: Slot) -> None:
        """The caller took ``slot`` and sent nothing: it leaves the windows at once, as if
        never taken. Giving back a released slot (or one given back) changes nothing."""
        with self._lock:
            if slot.released:
                return
            slot.released = True
            for held in (self._all, self._writes) if slot.write else (self._all,):
                held.in_flight -= 1

    def cancel(self) -> None:
        """Wake every waiting caller with BudgetCancelled (the refresher is stopping)."""
        self._stop.set()

    def throttled(self, retry_after: float | None) -> None:
        """Graph answered 429 although the budget held: pause everyone and slow down."""
        with self._lock:
            now = self._clock()
            # Without Retry-After the worker that got the 429 backs off by itself (the
            # retry policy); the others only feel the lower limits.
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + retry_after)
            if now - self._last_cut >= WINDOW:
                self._recover(now)
                self._factor = max(MIN_FACTOR, self._factor / 2)
                self._last_cut = now
            self._quiet_since = now

    # -- the arithmetic ----------------------------------------------------------------------

    @property
    def limits(self) -> tuple[int, int]:
        """The limits in force now: (any method, writes) per window."""
        with self._lock:
            self._recover(self._clock())
            return self._limits()

    def try_take(self, write: bool) -> tuple[float, Slot | None]:
        """Take a slot now: ``(0.0, the slot)``; or ``(seconds until one may be free, None)``."""
        with self._lock:
            now = self._clock()
            self._recover(now)
            self._all.expire(now)
            self._writes.expire(now)
            limit, write_limit = self._limits()
            free_at = max(self._paused_until, self._all.free_at(limit, now))
            if write:
                free_at = max(free_at, self._writes.free_at(write_limit, now))
            if free_at > now:
                return free_at - now, None
            self._all.in_flight += 1
            if write:
                self._writes.in_flight += 1
            return 0.0, Slot(write)

    def _limits(self) -> tuple[int, int]:
        return (
            max(1, math.floor(self.requests_per_window * self._factor)),
            max(1, math.floor(self.writes_per_window * self._factor)),
        )

    def _recover(self, now: float) -> None:
        """A tenth of the configured limits back for every full quiet window since the last 429."""
        if self._factor >= 1.0:
            return
        windows = math.floor((now - self._quiet_since) / WINDOW)
        if windows > 0:
            self._factor = min(1.0, self._factor + STEP * windows)
            self._quiet_since += windows * WINDOW

    def _count(self, waited: float) -> None:
        if waited > 0:
            self._on_wait(waited)
