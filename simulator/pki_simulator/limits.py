"""Graph's request limits: sliding windows per app and per tenant, answered with 429.

Microsoft documents, for every Intune area, at most 100 POST/PUT/PATCH/DELETE and 1,000
requests of any method per 20 s for one app in one tenant, and 200 / 2,000 for all apps of
a tenant together. `GraphLimits` holds those numbers (the defaults) and `Limiter` enforces
them: each window is a deque of the monotonic arrival times of the requests it admitted,
pruned from the left, so admission is O(1) amortised. A rejected request takes no slot.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pki_simulator.fields import convert_fields

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class GraphLimits:
    """Request limits; ``None`` of `Simulator.limits` means unlimited.

    ``app_*`` apply per (tenant, app), ``tenant_*`` per tenant over all its apps;
    ``*_requests`` count requests of any method, ``*_writes`` POST/PUT/PATCH/DELETE, each in
    a sliding window of ``window`` seconds. A throttled request gets ``Retry-After`` = the
    whole seconds (rounded up) until the violated window frees a slot, or ``retry_after``
    when set; no header at all when ``send_retry_after`` is False.
    """

    app_requests: int = 1000
    app_writes: int = 100
    tenant_requests: int = 2000
    tenant_writes: int = 200
    window: float = 20.0
    retry_after: float | None = None
    send_retry_after: bool = True

    def __post_init__(self) -> None:
        for name in ("app_requests", "app_writes", "tenant_requests", "tenant_writes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"graph limits {name}: must be an integer >= 1, got {value!r}")
        if not (isinstance(self.window, int | float) and self.window > 0):
            raise ValueError(f"graph limits window: must be > 0 seconds, got {self.window!r}")
        if self.retry_after is not None and not (
            isinstance(self.retry_after, int | float) and self.retry_after >= 0
        ):
            raise ValueError(f"graph limits retry_after: must be >= 0, got {self.retry_after!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GraphLimits:
        """From JSON (the control API): missing keys keep the documented defaults."""
        converters: dict[str, Callable[[Any], Any]] = {
            "app_requests": _integer,
            "app_writes": _integer,
            "tenant_requests": _integer,
            "tenant_writes": _integer,
            "window": float,
            "retry_after": float,
            "send_retry_after": _boolean,
        }
        kwargs = convert_fields(data, converters, "graph limits", nullable=("retry_after",))
        return cls(**kwargs)

    @classmethod
    def parse(cls, text: str) -> GraphLimits:
        """The ``--graph-limits`` syntax: ``default`` (Microsoft's documented values) or
        ``APP_REQUESTS/APP_WRITES[/WINDOW[/TENANT_REQUESTS/TENANT_WRITES]]``; the tenant
        limits default to twice the app limits (the documented ratio), the window to 20 s."""
        value = text.strip()
        if value.lower() == "default":
            return cls()
        parts = [p.strip() for p in value.split("/")]
        if len(parts) not in (2, 3, 5):
            raise ValueError(
                f"graph limits {text!r}: expected 'default' or "
                "APP_REQUESTS/APP_WRITES[/WINDOW[/TENANT_REQUESTS/TENANT_WRITES]]"
            )
        try:
            app_requests, app_writes = int(parts[0]), int(parts[1])
            window = float(parts[2]) if len(parts) > 2 else 20.0
            tenant_requests = int(parts[3]) if len(parts) == 5 else 2 * app_requests
            tenant_writes = int(parts[4]) if len(parts) == 5 else 2 * app_writes
        except ValueError:
            raise ValueError(f"graph limits {text!r}: numbers expected") from None
        return cls(app_requests, app_writes, tenant_requests, tenant_writes, window)


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("bool")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return int(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("not a boolean")


@dataclass(frozen=True)
class Throttled:
    """Why a request was refused: which window (``scope`` app|tenant, ``kind``
    requests|writes), its limit, and the seconds until it frees a slot."""

    scope: str
    kind: str
    limit: int
    wait: float

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, rounded up (at least 1)."""
        return max(1, math.ceil(self.wait - 1e-9))


class Limiter:
    """Sliding windows of admitted requests, thread-safe.

    Without a ``clock``, a request counts at its arrival time (``time.monotonic()``, the
    ``at`` of `check`), raised to the latest time counted so far when server threads race
    (microseconds), so that windows stay sorted; the simulator logs that time as the
    entry's ``monotonic``, so the log shows exactly what the limiter counted. With a
    ``clock`` (tests), requests count at the clock's time.
    """

    def __init__(
        self, limits: GraphLimits | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._limits = limits
        self._clock = clock
        self._windows: dict[tuple[str, ...], deque[float]] = {}
        self._last = float("-inf")

    @property
    def limits(self) -> GraphLimits | None:
        return self._limits

    @property
    def fake_clock(self) -> bool:
        """True when an injected clock, not arrival times, places requests in windows."""
        return self._clock is not None

    def set_limits(self, limits: GraphLimits | None) -> None:
        """New limits from now on; the requests admitted so far stay in their windows."""
        with self._lock:
            self._limits = limits

    def reset(self) -> None:
        """Forget every admitted request."""
        with self._lock:
            self._windows.clear()

    def admit(
        self, tenant_id: str, app_id: str, method: str, at: float | None = None
    ) -> Throttled | None:
        """Take a slot in every window the request counts in, or none and say why not."""
        return self.check(tenant_id, app_id, method, at)[1]

    def check(
        self, tenant_id: str, app_id: str, method: str, at: float | None = None
    ) -> tuple[float | None, Throttled | None]:
        """`admit`, also returning the time the request counted at (None when unlimited).
        ``at``: the request's arrival (monotonic seconds), used unless a clock was given."""
        limits = self._limits
        if limits is None:
            return None, None
        tenant, app = tenant_id.lower(), app_id.lower()
        write = method.upper() in WRITE_METHODS
        checks = [
            (("app", tenant, app, "requests"), "app", "requests", limits.app_requests),
            (("tenant", tenant, "requests"), "tenant", "requests", limits.tenant_requests),
        ]
        if write:
            checks += [
                (("app", tenant, app, "writes"), "app", "writes", limits.app_writes),
                (("tenant", tenant, "writes"), "tenant", "writes", limits.tenant_writes),
            ]
        with self._lock:
            if self._clock is not None:
                now = self._clock()
            else:
                now = max(time.monotonic() if at is None else at, self._last)
                self._last = now
            horizon = now - limits.window
            worst: Throttled | None = None
            windows = []
            for key, scope, kind, limit in checks:
                window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = deque()
                while window and window[0] <= horizon:
                    window.popleft()
                # after a limit was lowered, the window may hold more than it allows now:
                # the slot frees when the (len - limit + 1)-th oldest leaves
                if len(window) >= limit:
                    wait = window[len(window) - limit] + limits.window - now
                    if worst is None or wait > worst.wait:
                        worst = Throttled(scope, kind, limit, wait)
                windows.append(window)
            if worst is not None:
                return now, worst
            for window in windows:
                window.append(now)
            return now, None


def max_in_window(times: Iterable[float], window: float) -> int:
    """The most events in any sliding window ``(t - window, t]`` (times in seconds)."""
    ordered = sorted(times)
    best = left = 0
    for right, t in enumerate(ordered):
        while ordered[left] <= t - window:
            left += 1
        best = max(best, right - left + 1)
    return best


#: a leaf page's latency: seconds, a (low, high) range of seconds, or None (no wait)
PageLatency = float | tuple[float, float] | list[float] | None


def check_page_latency(value: PageLatency) -> tuple[float, float] | None:
    """The latency as a checked (low, high) pair (equal for a fixed value), or None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("page latency: expected seconds or a (low, high) range")
    if isinstance(value, int | float):
        low = high = float(value)
    else:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(
                f"page latency: expected seconds or a (low, high) range, got {value!r}"
            ) from None
    if not (0 <= low <= high) or math.isinf(high):
        raise ValueError(f"page latency: need 0 <= low <= high (finite), got {value!r}")
    return (low, high)


def parse_page_latency(text: str) -> tuple[float, float] | None:
    """``--page-latency``: ``SECONDS`` or ``LOW-HIGH`` (e.g. ``0.15-0.4``); ``0`` = none."""
    low, sep, high = text.strip().partition("-")
    try:
        value = check_page_latency((float(low), float(high)) if sep else float(low))
    except ValueError:
        raise ValueError(
            f"page latency {text!r}: expected SECONDS or LOW-HIGH, e.g. 0.15-0.4"
        ) from None
    return None if value == (0.0, 0.0) else value
