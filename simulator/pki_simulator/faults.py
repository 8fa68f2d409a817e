"""Faults: the bad days of Graph and Entra ID, switchable while requests are in flight.

A `Fault` is a frozen description; the `FaultSet` holds the active ones and how often
each may still fire, behind one lock, so that a test thread can flip faults while server
threads match requests against them. Matching consumes: a fault with ``times=2`` answers
exactly two matching requests, which is what lets tests count retries exactly.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from pki_simulator.fields import convert_fields

FaultKind = Literal[
    "throttle",
    "unavailable",
    "gateway_timeout",
    "slow",
    "reset",
    "malformed_json",
    "page_error",
    "token_error",
    "token_expiry",
    "ca_gone",
    "foreign_next_link",
    "query_broker",
    "crl_stale",
    "crl_missing",
    "crl_foreign_key",
    "crl_foreign_issuer",
    "crl_oversize",
    "crl_garbage",
    "crl_pem",
    "crl_error",
    "crl_hang",
    "crl_reset",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: CRL faults that change what the CRL *is* (its dates, entries, signature, bytes): states
#: of the CA's publication, looked up without being consumed (``times`` is refused).
CRL_CONTENT_FAULTS: tuple[str, ...] = (
    "crl_stale",
    "crl_missing",
    "crl_foreign_key",
    "crl_foreign_issuer",
    "crl_oversize",
    "crl_garbage",
    "crl_pem",
)
#: CRL faults of the transport: consumed like Graph faults (``times`` counts requests).
CRL_TRANSPORT_FAULTS: tuple[str, ...] = ("crl_error", "crl_hang", "crl_reset")

Target = Literal["graph", "token", "crl", "all"]

#: Where each kind applies unless ``target`` says otherwise.
_CRL_TARGET: Target = "crl"
_DEFAULT_TARGET: dict[str, Target] = {"token_error": "token"}
_DEFAULT_TARGET.update(dict.fromkeys(CRL_CONTENT_FAULTS + CRL_TRANSPORT_FAULTS, _CRL_TARGET))

_ids = itertools.count(1)


def _next_id() -> str:
    return f"f{next(_ids)}"


@dataclass(frozen=True, eq=False)
class Fault:
    """One fault. ``None`` filters match anything; ``page`` is 0-based.

    - ``throttle``: 429, with ``Retry-After: retry_after`` when given.
    - ``unavailable`` / ``gateway_timeout``: 503 / 504, ``Retry-After`` when given.
    - ``slow``: wait ``delay`` seconds, then answer normally (or with the next fault).
    - ``reset``: send the headers and part of the body, then reset the TCP connection.
    - ``malformed_json``: 200 with a truncated body.
    - ``page_error``: ``status`` (default 500) for the matching page, every time by default.
    - ``token_error``: the token endpoint answers ``invalid_client`` (401), or with
      ``status=429`` throttling (``Retry-After`` when given), ``status=400`` invalid_request,
      ``status=500``/``503`` a server error.
    - ``token_expiry``: every token issued so far (for ``tenant_id``, or all) stops working
      now; fresh tokens work. It acts once, when added, and is not kept.
    - ``ca_gone``: ``ca_id`` vanishes from the CA list and its endpoints answer 404.
    - ``foreign_next_link``: the ``@odata.nextLink`` of matching leaf pages points to
      ``next_link_base`` (default ``https://another-host.invalid``) instead of the simulator.
    - ``query_broker``: Intune's query broker throttling: the first ``attempts`` requests
      of EACH matching leaf page (action or navigation; keyed by tenant, CA, page index and
      source; default 1) answer 500 without ``Retry-After``, an Intune error body (JSON inside
      ``message``); later requests of that page succeed. ``times``, when given, still caps
      the 500s this fault sends in total.

    CRL faults (the CDN listener; ``tenant_id``, ``ca_id`` and ``version`` pick the CRL, a
    CA version's number; docs/simulator.md, "PKI and CRLs"):

    - ``crl_stale``: publication stopped: nextUpdate = (simulator clock when the fault was
      added) + ``next_update_in`` seconds (default -86400: lapsed a day ago; 172800 = two
      days left, a missed publication); thisUpdate = nextUpdate - 7 days, and revocations
      after thisUpdate are not on it.
    - ``crl_missing``: the first ``count`` (default 1) clean revoked certificates of the
      CA version that are unexpired at the anchor + 30 days and revoked at least a day
      before the anchor are left out of the CRL.
    - ``crl_foreign_key``: signed by another key (same issuer name and key identifier).
    - ``crl_foreign_issuer``: names another issuer (signed by the CA's own key).
    - ``crl_oversize``: padded with made-up entries until larger than ``size`` bytes
      (default 1 MiB).
    - ``crl_garbage``: 2 KiB of random bytes. ``crl_pem``: the CRL in PEM (valid).
    - ``crl_error``: ``status`` (default 404); ``crl_hang``: nothing for ``delay`` seconds
      (default 60), then the CRL; ``crl_reset``: headers and half the body, then an RST.

    ``target`` picks the endpoints a fault applies to: ``graph`` (default), ``token`` (the
    token endpoint; default for ``token_error``), ``crl`` (the CDN; default for ``crl_*``)
    or ``all``.
    """

    kind: FaultKind
    tenant_id: str | None = None
    ca_id: str | None = None
    page: int | None = None
    times: int | None = None
    retry_after: float | str | None = None
    delay: float = 0.0
    status: int | None = None
    target: Target | None = None
    next_link_base: str | None = None
    attempts: int | None = None
    version: int | None = None
    count: int | None = None
    size: int | None = None
    next_update_in: float | None = None
    id: str = field(default_factory=_next_id)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind: {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if self.times is not None and self.times < 1:
            raise ValueError("fault times: must be >= 1 (None = until cleared)")
        if self.page is not None and self.page < 0:
            raise ValueError("fault page: must be >= 0")
        if self.delay < 0:
            raise ValueError("fault delay: must be >= 0")
        if self.kind == "slow" and self.delay <= 0:
            raise ValueError("fault slow: needs delay > 0")
        if self.kind == "ca_gone" and not self.ca_id:
            raise ValueError("fault ca_gone: needs ca_id")
        if self.kind == "query_broker":
            if self.attempts is None:
                object.__setattr__(self, "attempts", 1)
            elif self.attempts < 1:
                raise ValueError("fault query_broker: attempts must be >= 1")
        elif self.attempts is not None:
            raise ValueError("fault attempts: only for query_broker")
        if self.target is not None and self.target not in get_args(Target):
            raise ValueError(f"fault target: {self.target!r} is not graph, token, crl or all")
        self._check_crl_fields()
        if isinstance(self.retry_after, int | float) and self.retry_after < 0:
            raise ValueError("fault retry_after: must be >= 0")

    def _check_crl_fields(self) -> None:
        kind = self.kind
        if kind in CRL_CONTENT_FAULTS and self.times is not None:
            raise ValueError(f"fault {kind}: a CRL's content lasts until removed (no times)")
        defaults: dict[str, tuple[str, object]] = {
            "crl_missing": ("count", 1),
            "crl_oversize": ("size", 1 << 20),
            "crl_stale": ("next_update_in", -86400.0),
        }
        for name in ("count", "size", "next_update_in"):
            wanted = defaults.get(kind)
            if wanted is not None and wanted[0] == name:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, wanted[1])
            elif getattr(self, name) is not None:
                raise ValueError(f"fault {name}: not a field of {kind}")
        if self.count is not None and self.count < 1:
            raise ValueError("fault crl_missing: count must be >= 1")
        if self.size is not None and not 0 <= self.size <= 1 << 28:
            raise ValueError("fault crl_oversize: size must be within [0, 256 MiB]")
        if self.version is not None and (not kind.startswith("crl_") or self.version < 1):
            raise ValueError("fault version: a CA version (>= 1) of a crl_* fault")
        if kind == "crl_hang" and self.delay <= 0:
            object.__setattr__(self, "delay", 60.0)
        if kind == "crl_error" and self.status is None:
            object.__setattr__(self, "status", 404)

    @property
    def applies_to(self) -> Target:
        return self.target or _DEFAULT_TARGET.get(self.kind, "graph")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Fault:
        """Build from JSON or CLI values, converting and checking types."""
        converters: dict[str, Callable[[Any], Any]] = {
            "kind": str,
            "tenant_id": str,
            "ca_id": str,
            "page": int,
            "times": int,
            "retry_after": _retry_after,
            "delay": float,
            "status": int,
            "target": str,
            "next_link_base": str,
            "attempts": int,
            "version": int,
            "count": int,
            "size": int,
            "next_update_in": float,
        }
        kwargs = convert_fields(data, converters, "fault", nullable=converters)
        if "kind" not in kwargs:
            raise ValueError("fault: kind is required")
        return cls(**kwargs)


def _retry_after(value: Any) -> float | str:
    if isinstance(value, bool):
        raise TypeError("bool")
    if isinstance(value, int | float):
        return value
    text = str(value)
    try:
        return float(text)
    except ValueError:
        return text  # an HTTP date


def format_retry_after(value: float | str) -> str:
    """Seconds as an integer when whole; fractions are kept (not RFC 9110) for fast tests."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Scope:
    """What a request is about, for matching."""

    target: Literal["graph", "token", "crl"]
    tenant_id: str | None = None
    ca_id: str | None = None
    page: int | None = None
    #: ``action`` or ``navigation`` for a leaf page, else None
    source: str | None = None
    #: the CA version of a CRL request
    version: int | None = None


class FaultSet:
    """The active faults, thread-safe."""

    def __init__(
        self,
        faults: Iterable[Fault] = (),
        on_token_expiry: Callable[[str | None], object] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        #: the clock's time when each fault was added (``crl_stale`` counts from it)
        self._added: dict[str, float] = {}
        self._faults: dict[str, Fault] = {}
        self._remaining: dict[str, int | None] = {}
        self._fired: dict[str, int] = {}
        #: query_broker: requests seen per (fault id, tenant, CA, page, source)
        self._attempts: dict[tuple[str, str, str, int, str], int] = {}
        self._on_token_expiry = on_token_expiry
        for fault in faults:
            self.add(fault)

    def add(self, fault: Fault) -> Fault:
        if fault.kind == "token_expiry":
            if self._on_token_expiry is not None:
                self._on_token_expiry(fault.tenant_id)
            with self._lock:
                self._fired[fault.id] = 1
            return fault
        added = self._clock() if self._clock is not None else 0.0
        with self._lock:
            self._faults[fault.id] = fault
            self._remaining[fault.id] = fault.times
            self._fired.setdefault(fault.id, 0)
            self._added.setdefault(fault.id, added)
        return fault

    def added_at(self, fault: Fault | str) -> float:
        """The clock's time when the fault was added (0 without a clock)."""
        fault_id = fault if isinstance(fault, str) else fault.id
        with self._lock:
            return self._added.get(fault_id, 0.0)

    def crl_state(self, scope: Scope, *, count: bool = False) -> list[Fault]:
        """The CRL content faults matching ``scope``, in the order they were added, not
        consumed; ``count`` adds one to each one's `fired` (a request they shaped)."""
        with self._lock:
            found = [
                f
                for f in self._faults.values()
                if f.kind in CRL_CONTENT_FAULTS and _matches(f, scope)
            ]
            if count:
                for fault in found:
                    self._fired[fault.id] = self._fired.get(fault.id, 0) + 1
            return found

    def remove(self, fault: Fault | str) -> bool:
        fault_id = fault if isinstance(fault, str) else fault.id
        with self._lock:
            self._remaining.pop(fault_id, None)
            self._drop_attempts(fault_id)
            return self._faults.pop(fault_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._remaining.clear()
            self._attempts.clear()

    def _drop_attempts(self, fault_id: str) -> None:
        for key in [k for k in self._attempts if k[0] == fault_id]:
            del self._attempts[key]

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults.values())

    def fired(self, fault: Fault | str) -> int:
        """How many requests this fault has answered so far."""
        fault_id = fault if isinstance(fault, str) else fault.id
        with self._lock:
            return self._fired.get(fault_id, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)

    def gone_cas(self, tenant_id: str) -> set[str]:
        """Lower-cased ids of the CAs made to disappear for this tenant."""
        with self._lock:
            return {
                f.ca_id.lower()
                for f in self._faults.values()
                if f.kind == "ca_gone"
                and f.ca_id
                and (f.tenant_id is None or f.tenant_id.lower() == tenant_id.lower())
            }

    def take(self, scope: Scope, kinds: Iterable[str]) -> Fault | None:
        """The first active fault of one of ``kinds`` matching ``scope``, consumed once."""
        wanted = set(kinds)
        with self._lock:
            for fault in self._faults.values():
                if fault.kind not in wanted or not _matches(fault, scope):
                    continue
                self._consume(fault)
                return fault
        return None

    def matching(self, scope: Scope, kinds: Iterable[str]) -> list[Fault]:
        """The active faults of ``kinds`` matching ``scope``, in order, not consumed (for
        the ground truth)."""
        wanted = set(kinds)
        with self._lock:
            return [f for f in self._faults.values() if f.kind in wanted and _matches(f, scope)]

    def take_query_broker(self, scope: Scope) -> Fault | None:
        """A ``query_broker`` fault that still owes this leaf page a 500, consumed once.

        Every matching request of the page counts as an attempt, whether it gets the 500
        or not, so attempt ``attempts + 1`` and later ones of that page pass."""
        if scope.source is None or scope.page is None:
            return None
        with self._lock:
            for fault in self._faults.values():
                if fault.kind != "query_broker" or not _matches(fault, scope):
                    continue
                key = (
                    fault.id,
                    (scope.tenant_id or "").lower(),
                    (scope.ca_id or "").lower(),
                    scope.page,
                    scope.source,
                )
                seen = self._attempts.get(key, 0)
                self._attempts[key] = seen + 1
                if seen < (fault.attempts or 0):
                    self._consume(fault)
                    return fault
        return None

    def _consume(self, fault: Fault) -> None:
        remaining = self._remaining[fault.id]
        if remaining is not None:
            if remaining <= 1:
                del self._faults[fault.id]
                del self._remaining[fault.id]
                self._drop_attempts(fault.id)
            else:
                self._remaining[fault.id] = remaining - 1
        self._fired[fault.id] = self._fired.get(fault.id, 0) + 1


def _same(expected: str | None, actual: str | None) -> bool:
    return expected is None or (actual is not None and expected.lower() == actual.lower())


def _matches(fault: Fault, scope: Scope) -> bool:
    applies = fault.applies_to
    if applies not in ("all", scope.target):
        return False
    if not _same(fault.tenant_id, scope.tenant_id) or not _same(fault.ca_id, scope.ca_id):
        return False
    if fault.version is not None and fault.version != scope.version:
        return False
    return fault.page is None or fault.page == scope.page


def parse_cli_fault(text: str) -> Fault:
    """``KIND[:key=value,...]`` as given to ``--fault``."""
    kind, _, rest = text.partition(":")
    data: dict[str, Any] = {"kind": kind.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--fault {text!r}: expected key=value, got {item!r}")
        data[key.strip()] = value.strip()
    return Fault.from_mapping(data)
