"""The fault matrix: every fault the simulator offers, against the real exporter process.

Two tenants with two CAs each, three leaf pages per CA. One fault at a time hits one CA
(page 1 of ``contoso``'s first CA, so that page 0 of every attempt marks where a refresh
starts in the simulator's request log) or one tenant. While it is active the data set
changes (fewer certificates everywhere), so that the numbers prove which snapshot is
served: the other CAs move to the new ground truth, the failing one keeps exactly its last
good numbers. Then the fault is removed and everything must be exact again.

Retries are counted in the simulator's log, refresh by refresh: 5 attempts for 429/503/504
(the policy in pki_exporter/graph/retry.py), 2 for a 401 (one retry with a fresh token), 1 for any
other 4xx/5xx or an unreadable body; waits follow Retry-After or the jittered backoff
(0.25..0.5, 0.5..1, 1..2, 2..4 s) and never pass the per-refresh deadline
max(interval, 5 x timeout); a retry that would have less than 0.5 s of it left is not sent.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from pki_simulator import Fault, generate_spec

from pki_exporter.graph.retry import MIN_ATTEMPT_SECONDS
from pki_exporter.state import REASONS
from tests.conftest import ANCHOR
from tests.exporter_proc import ExporterProcess, Samples, tenant_config, write_config
from tests.test_exporter_e2e import WINDOWS, certificate_samples

pytestmark = pytest.mark.timeout(120)

MAX_ATTEMPTS = 5
LAST_PAGE = 2
SLACK = 0.5
"""Seconds of scheduling noise allowed above a computed wait (2 noisy cores)."""


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    sim: Any
    exporter: ExporterProcess
    names: dict[str, str]
    """tenant id -> tenant label."""
    target: str
    """The CA that gets the fault: contoso's first CA."""
    target_tenant: str
    others: list[str]
    all_cas: list[str]
    spec2: Any
    """The data set served from the moment the fault is on."""
    baseline: Samples
    timeout: float

    @property
    def deadline(self) -> float:
        return max(1.0, 5 * self.timeout)

    def scrape(self) -> Samples:
        return self.exporter.scrape()

    def truth(self) -> Samples:
        """The ground truth of the metrics this exporter exports, for the data set now served."""
        truth = self.sim.expected_samples(now=ANCHOR, windows=WINDOWS, tenant_names=self.names)
        return certificate_samples(dict(truth))


def start_rig(
    start_simulator: Callable[..., Any],
    start_exporter: Callable[..., ExporterProcess],
    tmp_path: Path,
    *,
    seed: int,
    timeout: str = "1s",
    configured: bool = False,
) -> Rig:
    spec = generate_spec(
        seed=seed, anchor=ANCHOR, tenants=2, cas=2, certificates=300, page_size=100
    )
    # The data set of the fault phase: every CA loses 60 certificates (still 3 pages).
    spec2 = replace(
        spec,
        tenants=tuple(
            replace(t, cas=tuple(replace(ca, certificates=240) for ca in t.cas))
            for t in spec.tenants
        ),
    )
    sim = start_simulator(spec=spec)
    names = {t.tenant_id: t.name for t in sim.tenants}
    entries = []
    for tenant in sim.tenants:
        cas: Any = "all"
        if configured:
            cas = [{"id": ca.id} for ca in tenant.cas]
        entries.append(tenant_config(sim, tenant, tenant.name, certification_authorities=cas))
    cfg = write_config(
        tmp_path / "config.yaml",
        entries,
        refresh={"interval": "1s", "timeout": timeout, "concurrency": 4},
    )
    env = {f"SECRET_{t.name.upper()}": t.client_secret for t in sim.tenants}
    exporter = start_exporter("--config.file", str(cfg), env=env)
    all_cas = [ca.id for t in sim.tenants for ca in t.cas]
    baseline = exporter.wait_for(lambda s: all_ok(s, all_cas), what="every CA refreshed")
    rig = Rig(
        sim=sim,
        exporter=exporter,
        names=names,
        target=sim.tenants[0].cas[0].id,
        target_tenant=sim.tenants[0].name,
        others=all_cas[1:],
        all_cas=all_cas,
        spec2=spec2,
        baseline=baseline,
        timeout=float(timeout.rstrip("s")),
    )
    assert certificate_samples(baseline) == rig.truth()
    return rig


# --------------------------------------------------------------------------- reading samples


def get(samples: Samples, metric: str, **labels: str) -> float | None:
    found = [
        v for k, v in samples.items() if k[0] == metric and labels.items() <= dict(k[1]).items()
    ]
    assert len(found) <= 1, (metric, labels, found)
    return found[0] if found else None


def success(samples: Samples, ca_id: str) -> float | None:
    return get(samples, "intune_cloudpki_refresh_success", ca_id=ca_id)


def failures(samples: Samples, ca_id: str) -> dict[str, float]:
    return {
        dict(k[1])["reason"]: v
        for k, v in samples.items()
        if k[0] == "intune_cloudpki_refresh_failures_total" and dict(k[1])["ca_id"] == ca_id
    }


def all_ok(samples: Samples, cas: list[str]) -> bool:
    return all(success(samples, ca) == 1 for ca in cas)


def of_cas(samples: Samples, cas: list[str]) -> Samples:
    return {k: v for k, v in samples.items() if dict(k[1]).get("ca_id") in cas}


def tenant_up(samples: Samples, tenant: str) -> float | None:
    return get(samples, "intune_cloudpki_tenant_up", tenant=tenant)


# --------------------------------------------------------------------------- the phases


def fault_phase(
    rig: Rig,
    faults: list[Fault],
    *,
    failing: list[str],
    reason: str,
    tenant_down: str | None = None,
    times: int = 2,
) -> Samples:
    """Switch the faults on and the data set over; wait until ``failing`` CAs have failed
    ``times`` times (by default twice: not a one-off) and every other CA shows the new
    numbers."""
    sim = rig.sim
    for fault in faults:
        sim.faults.add(fault)
    # Only once a faulted request was answered is no refresh of a failing CA past the fault.
    # (A token expiry counts as fired when added: wait for the faults that answer.)
    answering = [f for f in faults if f.kind != "token_expiry"] or faults
    deadline = time.monotonic() + 30
    while not any(sim.faults.fired(f) for f in answering):
        assert time.monotonic() < deadline, "the fault never fired"
        time.sleep(0.02)
    sim.set_dataset(rig.spec2)
    healthy = [ca for ca in rig.all_cas if ca not in failing]

    def settled(s: Samples) -> bool:
        want = of_cas(rig.truth(), healthy)
        return (
            all(failures(s, ca).get(reason, 0) >= times for ca in failing)
            and all(success(s, ca) == 0 for ca in failing)
            and certificate_samples(of_cas(s, healthy)) == want
            and all_ok(s, healthy)
        )

    samples = rig.exporter.wait_for(settled, timeout=60, what=f"{reason} failures recorded")
    # The failing CAs keep exactly their last good numbers (the old data set) ...
    assert certificate_samples(of_cas(samples, failing)) == certificate_samples(
        of_cas(rig.baseline, failing)
    )
    assert certificate_samples(of_cas(samples, failing)), "the last good snapshot is kept"
    # ... as of the last successful read, while the others are exact for the new one.
    assert certificate_samples(of_cas(samples, healthy)) == of_cas(rig.truth(), healthy)
    for ca in failing:
        assert success(samples, ca) == 0
        counted = failures(samples, ca)
        assert set(counted) == set(REASONS)
        assert {r for r, n in counted.items() if n} == {reason}, counted
        assert (
            get(samples, "intune_cloudpki_refresh_last_success_timestamp_seconds", ca_id=ca)
            == ANCHOR.timestamp()
        )
    for ca in healthy:
        assert success(samples, ca) == 1
        assert not any(failures(samples, ca).values()), failures(samples, ca)
    for tenant in rig.names.values():
        assert tenant_up(samples, tenant) == (0 if tenant == tenant_down else 1)
    # The exporter serves its other endpoints all along.
    assert rig.exporter.get("/ready").status_code == 200
    assert rig.exporter.get("/healthz").status_code == 200
    return samples


def recovery_phase(
    rig: Rig, faults: list[Fault], *, failing: list[str], reason: str, times: int = 2
) -> Samples:
    """Remove the faults: the next cycle must bring every CA back, exact."""
    for fault in faults:
        rig.sim.faults.remove(fault)
    samples = rig.exporter.wait_for(
        lambda s: all_ok(s, rig.all_cas) and certificate_samples(s) == rig.truth(),
        timeout=30,
        what="recovery",
    )
    for tenant in rig.names.values():
        assert tenant_up(samples, tenant) == 1
    # The failure counters keep what happened; nothing new is counted after recovery.
    for ca in failing:
        assert failures(samples, ca)[reason] >= times
    return samples


def refreshes(sim: Any, ca_id: str) -> list[list[Any]]:
    """The leaf requests of one CA, split into refreshes (each starts with page 0) and cut
    after the last refresh that read the last page (the one in flight is not judged)."""
    entries = sorted(
        (e for e in sim.log if e.ca_id == ca_id and e.endpoint == "leaves"), key=lambda e: e.time
    )
    groups: list[list[Any]] = []
    for entry in entries:
        if entry.page == 0 or not groups:
            groups.append([entry])
        else:
            groups[-1].append(entry)
    complete = [i for i, g in enumerate(groups) if succeeded(g)]
    assert complete, "no successful refresh in the log"
    return groups[: complete[-1] + 1]


def succeeded(group: list[Any]) -> bool:
    return any(e.page == LAST_PAGE and e.status == 200 and e.fault is None for e in group)


def failed_refreshes(sim: Any, ca_id: str, kind: str) -> list[list[Any]]:
    """Per failed refresh: the requests the fault answered."""
    result = []
    for group in refreshes(sim, ca_id):
        if not succeeded(group):
            hit = [e for e in group if e.fault == kind]
            assert hit, f"a refresh failed without the fault: {group}"
            result.append(hit)
    return result


def gaps(entries: list[Any]) -> list[float]:
    """From one attempt's arrival to the next one's."""
    return [b.sent - a.sent for a, b in itertools.pairwise(entries)]


def waits(entries: list[Any]) -> list[float]:
    """From one attempt's answer to the next one's arrival: the exporter's wait and nothing
    of the simulator's (its thread may get to a request tenths of a second late)."""
    return [b.sent - a.answered for a, b in itertools.pairwise(entries)]


def assert_backoff(entries: list[Any], *, timed_out: float = 0.0) -> None:
    """Waits between attempts follow the jittered backoff: retry n waits 0.25*2^(n-1)..0.5*2^(n-1) s
    after the answer; or, for attempts that ``timed_out`` (seconds: the timeout), after the
    exporter gave up on them, ``timed_out`` after it sent them."""
    measured = [g - timed_out for g in gaps(entries)] if timed_out else waits(entries)
    for n, wait in enumerate(measured, start=1):
        low, high = 0.25 * 2 ** (n - 1), 0.5 * 2 ** (n - 1)
        assert low - 0.01 <= wait <= high + SLACK, (n, wait, low, high)


def began(rig: Rig, attempt: Any) -> float:
    """When the leaf read that made ``attempt`` began: its page 0 reached the simulator."""
    return max(
        e.sent
        for e in rig.sim.log
        if e.ca_id == attempt.ca_id
        and e.endpoint == "leaves"
        and e.page == 0
        and e.sent <= attempt.sent
    )


def deadline_stops(rig: Rig) -> list[float | None]:
    """The target CA's refreshes that ended because a retry would pass the deadline, in
    order: the wait the retry wanted, or None when it found no time left once its wait was
    over (after the token or the budget's slot)."""
    stops: list[float | None] = []
    for line in rig.exporter.log().splitlines():
        if "CA refresh failed" not in line or f"ca_id={rig.target}" not in line:
            continue
        if wanted := re.search(r"\(retry in ([0-9.]+)s would pass the deadline\)", line):
            stops.append(float(wanted.group(1)))
        elif "(the retry would pass the deadline)" in line:
            stops.append(None)
    return stops


def count_code(samples: Samples, tenant: str, code: str) -> float:
    return get(samples, "intune_cloudpki_graph_requests_total", tenant=tenant, code=code) or 0.0


def final_failures(rig: Rig, samples: Samples, reason: str) -> int:
    return int(failures(samples, rig.target)[reason])


# --------------------------------------------------------------------------- the matrix


def test_throttle_with_retry_after(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    # timeout 2s: a 10 s deadline, so that five attempts a second apart fit whatever the
    # machine's load (with 5 s the fifth came within 0.8 s of the deadline).
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=31, timeout="2s")
    fault = Fault(kind="throttle", ca_id=rig.target, page=1, retry_after=1)
    fault_phase(rig, [fault], failing=[rig.target], reason="throttled", times=1)
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="throttled", times=1)
    failed = failed_refreshes(rig.sim, rig.target, "throttle")
    assert len(failed) == final_failures(rig, samples, "throttled")
    for attempts in failed:
        # Five attempts, each one second (Retry-After: 1) after the previous answer; a
        # sixth would have been within the 10 s deadline, so the limit is the count.
        assert len(attempts) == MAX_ATTEMPTS
        assert all(1.0 - 0.01 <= w <= 1.0 + SLACK for w in waits(attempts)), waits(attempts)
        assert all(e.status == 429 for e in attempts)
    throttled = sum(1 for e in rig.sim.log if e.status == 429)
    assert count_code(samples, rig.target_tenant, "429") == throttled
    assert "HTTP 429 TooManyRequests" in rig.exporter.log()


def test_throttle_retry_after_as_http_date(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """Retry-After as an HTTP date is read against the real clock, not the frozen one."""
    # timeout 2s: a 10 s deadline. The date is 4 to 5 s away and the refresh that meets the
    # 429 may have begun a second or more before the fault was added; with a 5 s deadline
    # the retry could come so late that the last page was refused as past the deadline.
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=32, timeout="2s")
    started = time.time()
    until = int(started) + 5  # an HTTP date has whole seconds; the fault may meet the next refresh
    fault = rig.sim.faults.add(
        Fault(
            kind="throttle",
            ca_id=rig.target,
            page=1,
            times=1,
            retry_after=formatdate(until, usegmt=True),
        )
    )

    def page1_read_after_the_429() -> bool:
        # (A refresh in flight when the fault came may have read page 1 before it.)
        page1 = [e for e in rig.sim.log if e.ca_id == rig.target and e.page == 1]
        throttled = [e for e in page1 if e.status == 429]
        return bool(throttled) and any(
            e.status == 200 and e.time > throttled[0].time for e in page1
        )

    samples = rig.exporter.wait_for(
        lambda s: rig.sim.faults.fired(fault) == 1 and page1_read_after_the_429(),
        what="the throttled page read again",
    )
    page1 = [e for e in rig.sim.log if e.ca_id == rig.target and e.page == 1 and e.time > started]
    (throttled,) = [e for e in page1 if e.status == 429]
    retried = next(e for e in page1 if e.time > throttled.time)
    assert throttled.time < until - 1.5  # not a trivial wait
    # When the retry was sent, on the wall clock (the log's ``time`` is when the simulator's
    # thread got to it; ``time - monotonic`` is the wall clock's offset).
    offset = retried.time - retried.monotonic
    assert until - 0.02 <= retried.sent + offset <= until + SLACK
    # The premise of what follows: the refresh had at least 2 s of its deadline left after
    # the retry, for the last page.
    start = began(rig, throttled) + offset
    assert until + 2 < start + rig.deadline, (start, until, rig.deadline)
    # Within the deadline: the refresh succeeded on the retry, nothing counted as failed.
    assert not any(failures(samples, rig.target).values())
    assert success(samples, rig.target) == 1


def test_throttle_without_retry_after_backs_off(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    # timeout 2s: a 10 s deadline leaves room for all four backoff waits (at most 7.5 s).
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=33, timeout="2s")
    fault = Fault(kind="throttle", ca_id=rig.target, page=1)
    fault_phase(rig, [fault], failing=[rig.target], reason="throttled", times=1)
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="throttled", times=1)
    failed = failed_refreshes(rig.sim, rig.target, "throttle")
    assert len(failed) == final_failures(rig, samples, "throttled")
    for attempts in failed:
        assert len(attempts) == MAX_ATTEMPTS
        assert_backoff(attempts)
        assert attempts[-1].sent - attempts[0].sent <= rig.deadline


@pytest.mark.parametrize(
    ("kind", "status"), [("unavailable", 503), ("gateway_timeout", 504)], ids=["503", "504"]
)
def test_unavailable_and_gateway_timeout(
    start_simulator: Any, start_exporter: Any, tmp_path: Path, kind: str, status: int
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=34)
    # Retry-After: 0 is honoured as "at once": five attempts in quick succession.
    fault = Fault(kind=kind, ca_id=rig.target, page=1, retry_after=0)
    fault_phase(rig, [fault], failing=[rig.target], reason="http_5xx")
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="http_5xx")
    failed = failed_refreshes(rig.sim, rig.target, kind)
    assert len(failed) == final_failures(rig, samples, "http_5xx")
    for attempts in failed:
        assert len(attempts) == MAX_ATTEMPTS
        assert all(e.status == status for e in attempts)
        assert max(waits(attempts)) < SLACK  # no backoff when Graph says 0
    assert count_code(samples, rig.target_tenant, str(status)) == sum(
        1 for e in rig.sim.log if e.status == status
    )


def test_gateway_timeout_without_retry_after_stops_at_the_deadline(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """With a 5 s deadline the backoff (3.75..7.5 s in all) runs out before attempt 5 at times:
    then the refresh ends early, counted as the status it saw, never past the deadline."""
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=35)
    fault = Fault(kind="gateway_timeout", ca_id=rig.target, page=1)
    fault_phase(rig, [fault], failing=[rig.target], reason="http_5xx", times=1)
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="http_5xx", times=1)
    failed = failed_refreshes(rig.sim, rig.target, "gateway_timeout")
    assert len(failed) == final_failures(rig, samples, "http_5xx")
    for attempts in failed:
        assert len(attempts) <= MAX_ATTEMPTS
        assert_backoff(attempts)
        # The last attempt still had time to be answered before the deadline (0.1 s: from
        # the exporter's check to the request on the wire).
        last = attempts[-1].sent - began(rig, attempts[0])
        assert last <= rig.deadline - MIN_ATTEMPT_SECONDS + 0.1, last
    # A refresh stopped short of five attempts only because a retry would pass the deadline
    # (never cut off by it: no `timeout`, which fault_phase would have seen) ...
    short = [a for a in failed if len(a) < MAX_ATTEMPTS]
    stops = deadline_stops(rig)
    assert len(stops) == len(short), ([len(a) for a in failed], stops)
    # ... and only when it really would: the last answer, the wait wanted (at most the
    # backoff's ceiling when not logged) and the time an attempt needs reach past the
    # deadline, counted from page 0 (SLACK: the deadline starts a little before page 0,
    # and the exporter reads an answer a little after it was sent).
    for attempts, wanted in zip(short, stops, strict=True):
        wait = wanted if wanted is not None else 0.5 * 2 ** (len(attempts) - 1)
        reach = attempts[-1].answered + wait + MIN_ATTEMPT_SECONDS + SLACK
        assert reach >= began(rig, attempts[0]) + rig.deadline, (len(attempts), wanted)


def test_slow_beyond_the_timeout(start_simulator: Any, start_exporter: Any, tmp_path: Path) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=36)
    fault = Fault(kind="slow", ca_id=rig.target, page=1, delay=2.5)
    samples = fault_phase(rig, [fault], failing=[rig.target], reason="timeout", times=1)
    duration = get(samples, "intune_cloudpki_refresh_duration_seconds", ca_id=rig.target)
    assert duration is not None and 1.0 <= duration <= rig.deadline + SLACK
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="timeout", times=1)
    failed = failed_refreshes(rig.sim, rig.target, "slow")
    assert len(failed) == final_failures(rig, samples, "timeout")
    for attempts in failed:
        # Each attempt gives up after the 1 s timeout, then backs off; the deadline (5 s)
        # ends the refresh after three attempts (the third is sent 2.75..3.5 s in, and a
        # fourth would come 4.75 s in at the soonest, with less than 0.5 s left), or two
        # when the machine is slow.
        assert 2 <= len(attempts) <= 3, gaps(attempts)
        assert_backoff(attempts, timed_out=rig.timeout)
    assert (
        f"timed out waiting for an answer from 127.0.0.1:{rig.sim.port} (tried {rig.sim.url}/beta/"
        in rig.exporter.log()
    )


def test_connection_reset_mid_body(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    # timeout 2s: a 10 s deadline holds five attempts (the four waits take 7.5 s at most).
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=37, timeout="2s")
    fault = Fault(kind="reset", ca_id=rig.target, page=1)
    fault_phase(rig, [fault], failing=[rig.target], reason="network", times=1)
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="network", times=1)
    failed = failed_refreshes(rig.sim, rig.target, "reset")
    assert len(failed) == final_failures(rig, samples, "network")
    for attempts in failed:
        assert len(attempts) == MAX_ATTEMPTS
        assert_backoff(attempts)


def test_malformed_json(start_simulator: Any, start_exporter: Any, tmp_path: Path) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=38)
    fault = Fault(kind="malformed_json", ca_id=rig.target, page=1)
    fault_phase(rig, [fault], failing=[rig.target], reason="invalid_response")
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason="invalid_response")
    failed = failed_refreshes(rig.sim, rig.target, "malformed_json")
    assert len(failed) == final_failures(rig, samples, "invalid_response")
    assert all(len(attempts) == 1 for attempts in failed)  # a broken body is not retried
    assert "leaf page is not valid JSON" in rig.exporter.log()


@pytest.mark.parametrize(
    ("status", "reason", "attempts"),
    [(500, "http_5xx", None), (404, "http_4xx", 1), (401, "auth", 2)],
)
def test_page_failing_every_time(
    start_simulator: Any,
    start_exporter: Any,
    tmp_path: Path,
    status: int,
    reason: str,
    attempts: int | None,
) -> None:
    # timeout 2s: a 10 s deadline holds five attempts (the four waits take 7.5 s at most).
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=39, timeout="2s")
    fault = Fault(kind="page_error", ca_id=rig.target, page=1, status=status)
    fault_phase(rig, [fault], failing=[rig.target], reason=reason)
    samples = recovery_phase(rig, [fault], failing=[rig.target], reason=reason)
    failed = failed_refreshes(rig.sim, rig.target, "page_error")
    assert len(failed) == final_failures(rig, samples, reason)
    tokens = [e.time for e in rig.sim.log if e.endpoint == "token"]
    for hit in failed:
        if attempts is None:
            # 500 (Intune's query broker throttles so): retried with backoff like a 503
            # without Retry-After, until the attempts run out.
            assert len(hit) == MAX_ATTEMPTS, hit
            assert_backoff(hit)
            continue
        # 401: exactly one retry, with a token fetched in between; other 4xx: none.
        assert len(hit) == attempts, hit
        if status == 401:
            assert any(hit[0].time < t < hit[1].time for t in tokens)
    assert f"HTTP {status}" in rig.exporter.log()


def test_500_retried_then_recovered(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """Two 500s without Retry-After on a page, then the page answers: the refresh succeeds,
    nothing is counted as a failure, and the numbers are exact."""
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=42)
    rig.sim.set_dataset(rig.spec2)
    fault = rig.sim.faults.add(
        Fault(kind="page_error", ca_id=rig.target, page=1, status=500, times=2)
    )
    samples = rig.exporter.wait_for(
        lambda s: (
            rig.sim.faults.fired(fault) == 2
            and all_ok(s, rig.all_cas)
            and certificate_samples(s) == rig.truth()
        ),
        timeout=30,
        what="the refresh past two 500s",
    )
    assert not any(failures(samples, rig.target).values())
    page = [
        e
        for e in rig.sim.log
        if e.ca_id == rig.target and e.endpoint == "leaves" and e.page == 1 and e.fault
    ]
    assert [e.status for e in page] == [500, 500]
    after = next(
        e
        for e in sorted(rig.sim.log, key=lambda e: e.time)
        if e.ca_id == rig.target
        and e.endpoint == "leaves"
        and e.page == 1
        and e.time > page[-1].time
    )
    assert after.status == 200
    assert_backoff([*page, after])
    assert count_code(samples, rig.target_tenant, "500") == 2


def test_token_error_invalid_client(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=40)
    tenant = rig.sim.tenants[0]
    failing = [ca.id for ca in tenant.cas]
    # The secret stops working, and the token in the cache is revoked: the renewal fails.
    faults = [
        Fault(kind="token_error", tenant_id=tenant.tenant_id),
        Fault(kind="token_expiry", tenant_id=tenant.tenant_id),
    ]
    samples = fault_phase(rig, faults, failing=failing, reason="auth", tenant_down=tenant.name)
    assert "invalid_client" in rig.exporter.get("/").text
    samples = recovery_phase(rig, faults, failing=failing, reason="auth")
    # No retry storm at the token endpoint: one token request per failed attempt, i.e. per
    # cycle (discovery fails first), plus one per CA in the cycle where the revoked token
    # was still cached (discovery got the 401, each CA then asked for a token itself).
    # The faults arrive mid-cycle: a CA whose read was done by then missed that cycle's
    # failure, so the CAs' counts may differ by that one cycle, never more.
    refused = sum(1 for e in rig.sim.log if e.endpoint == "token" and e.status == 401)
    counts = [int(failures(samples, ca)["auth"]) for ca in failing]
    assert max(counts) - min(counts) <= 1, counts
    assert min(counts) <= refused <= max(counts) + len(failing), (refused, counts)
    assert "invalid_client" in rig.exporter.log()


def test_token_endpoint_throttled(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=41)
    tenant = rig.sim.tenants[0]
    failing = [ca.id for ca in tenant.cas]
    faults = [
        Fault(kind="token_error", tenant_id=tenant.tenant_id, status=429, retry_after=3),
        Fault(kind="token_expiry", tenant_id=tenant.tenant_id),
    ]
    # A throttled token endpoint is not refused credentials: counted as throttled, retried.
    fault_phase(rig, faults, failing=failing, reason="throttled", tenant_down=tenant.name)
    deadline = time.monotonic() + 20
    while rig.sim.faults.fired(faults[0]) < 2:
        assert time.monotonic() < deadline, "the token endpoint was not asked again"
        time.sleep(0.05)
    recovery_phase(rig, faults, failing=failing, reason="throttled")
    # MSAL honours Retry-After at the token endpoint: the 429 is replayed from its cache
    # (for 3 s counted in whole seconds, so 2..3 s) instead of asking at every cycle (1 s).
    asked = [
        e
        for e in rig.sim.log
        if e.endpoint == "token" and e.tenant_id == tenant.tenant_id and e.fault == "token_error"
    ]
    assert len(asked) >= 2
    assert all(gap >= 1.95 for gap in gaps(asked)), gaps(asked)
    assert "temporarily_unavailable" in rig.exporter.log()


def test_token_expiry_mid_run_costs_one_retry(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=42)
    sim = rig.sim
    tokens_before = len(sim.issued_tokens())
    expired_at = time.time()
    sim.faults.add(Fault(kind="token_expiry"))
    sim.set_dataset(rig.spec2)
    # Every tenant gets a fresh token on the next request and nothing fails.
    samples = rig.exporter.wait_for(
        lambda s: certificate_samples(s) == rig.truth() and all_ok(s, rig.all_cas),
        what="fresh numbers after the token expiry",
    )
    for ca in rig.all_cas:
        assert not any(failures(samples, ca).values()), failures(samples, ca)
    for tenant in sim.tenants:
        assert tenant_up(samples, tenant.name) == 1
        fresh = [
            e
            for e in sim.log
            if e.endpoint == "token" and e.tenant_id == tenant.tenant_id and e.time >= expired_at
        ]
        assert fresh and all(e.status == 200 for e in fresh)
        # Each request that met the revoked token was retried once with a fresh one; at
        # most the requests in flight at that moment (discovery or 2 CAs) can meet it.
        assert 1 <= len(fresh) <= 3
    refused = [
        e for e in sim.log if e.status == 401 and e.time >= expired_at and e.endpoint != "token"
    ]
    assert 2 <= len(refused) <= 2 * 3  # a revoked token carries no tenant: both tenants
    assert len(sim.issued_tokens()) > tokens_before


@pytest.mark.parametrize("configured", [False, True], ids=["discovered", "configured"])
def test_ca_gone(
    start_simulator: Any, start_exporter: Any, tmp_path: Path, configured: bool
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=43, configured=configured)
    fault = Fault(kind="ca_gone", ca_id=rig.target)
    if configured:
        # A CA named in the config is asked for by id: 404, not retried, last data kept.
        rig.sim.faults.add(fault)
        rig.sim.set_dataset(rig.spec2)
        samples = rig.exporter.wait_for(
            lambda s: (
                failures(s, rig.target)["http_4xx"] >= 2
                and certificate_samples(of_cas(s, rig.others)) == rig.truth()
            ),
            what="configured CA failing with 404",
        )
        assert success(samples, rig.target) == 0
        assert certificate_samples(of_cas(samples, [rig.target])) == certificate_samples(
            of_cas(rig.baseline, [rig.target])
        )
        assert all_ok(samples, rig.others)
        rig.sim.faults.remove(fault)
        samples = rig.exporter.wait_for(
            lambda s: all_ok(s, rig.all_cas) and certificate_samples(s) == rig.truth(),
            what="recovery",
        )
        not_found = [e for e in rig.sim.log if e.ca_id == rig.target and e.status == 404]
        endpoints = [e.endpoint for e in not_found]
        # Asked for by id, each refresh; only the read in flight when the CA went may have
        # met the 404 on its leaves instead.
        assert "ca_get" in endpoints and set(endpoints) <= {"ca_get", "leaves"}, endpoints
        assert endpoints.count("leaves") <= 1, endpoints
        assert len(not_found) == failures(samples, rig.target)["http_4xx"]
        return
    fault_time = time.time()
    rig.sim.faults.add(fault)
    rig.sim.set_dataset(rig.spec2)
    # Discovered CAs that leave the list stop being exported, with nothing counted as failed.
    samples = rig.exporter.wait_for(
        lambda s: (
            certificate_samples(s) == rig.truth()
            and not of_cas(s, [rig.target])
            and all_ok(s, rig.others)
        ),
        what="CA gone from /metrics",
    )
    assert len(rig.truth()) < len(certificate_samples(rig.baseline))
    for ca in rig.others:
        assert not any(failures(samples, ca).values())
    # At most the one refresh in flight when the CA went can meet a 404; none after.
    late = [e for e in rig.sim.log if e.ca_id == rig.target and e.time >= fault_time]
    assert len([e for e in late if e.status == 404]) <= 1
    rig.sim.faults.remove(fault)
    samples = rig.exporter.wait_for(
        lambda s: all_ok(s, rig.all_cas) and certificate_samples(s) == rig.truth(),
        what="CA back",
    )
    assert not any(failures(samples, rig.target).values())  # a new series, counted from 0


def test_foreign_next_link_is_never_followed(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    rig = start_rig(start_simulator, start_exporter, tmp_path, seed=44)
    # A listener on the same host but another port: a different origin all the same.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        base = f"https://127.0.0.1:{trap.getsockname()[1]}"
        fault = Fault(kind="foreign_next_link", ca_id=rig.target, page=1, next_link_base=base)
        fault_phase(rig, [fault], failing=[rig.target], reason="invalid_response")
        samples = recovery_phase(rig, [fault], failing=[rig.target], reason="invalid_response")
        with pytest.raises(BlockingIOError):
            trap.accept()  # the bearer token never went there
    failed = failed_refreshes(rig.sim, rig.target, "foreign_next_link")
    assert len(failed) == final_failures(rig, samples, "invalid_response")
    assert all(len(hit) == 1 for hit in failed)
    assert f"refused @odata.nextLink to {base}" in rig.exporter.log()
