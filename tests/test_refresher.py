"""pki_exporter.refresher: Refresher with a Store against the in-process simulator.

One cycle fills the store; a CA's data changes only when its whole read completed (the
swap is atomic); failures are recorded as data; stop() ends every thread it owns, and
leaves behind only a request still in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pki_simulator import Fault, Simulator

from pki_exporter.refresher import Refresher
from pki_exporter.state import REASONS, Store
from tests.inproc import CA_A, CA_B, ca, one_tenant, write_config

pytestmark = pytest.mark.timeout(60)

TENANT = "contoso"
NO_FAILURES = dict.fromkeys(REASONS, 0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator.from_spec(one_tenant(ca(CA_A, "Issuing A", 2500), ca(CA_B, "B", 10)))
    simulator.start()
    yield simulator
    simulator.close()


@pytest.fixture
def refresher(sim: Simulator, tmp_path: Path) -> Iterator[tuple[Refresher, Store]]:
    config = write_config(sim, tmp_path)
    store = Store([TENANT])
    made = Refresher(config, store)
    yield made, store
    made.stop()


def wait_until(condition: object, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_one_cycle_fills_the_store(refresher: tuple[Refresher, Store]) -> None:
    refresh, store = refresher
    refresh.refresh_all()
    tenant = store.tenants[TENANT]
    assert (tenant.up, tenant.attempted, tenant.last_error) == (True, True, None)
    assert store.ready()
    got = {
        ca_id: (ca.label, ca.snapshot.leaves.total if ca.snapshot else None, ca.last_success)
        for ca_id, ca in tenant.cas.items()
    }
    assert got == {CA_A: ("Issuing A", 2500, True), CA_B: ("B", 10, True)}
    assert {ca_id: dict(ca.failures) for ca_id, ca in tenant.cas.items()} == {
        CA_A: NO_FAILURES,
        CA_B: NO_FAILURES,
    }
    # one CA list, 3 + 1 leaf pages
    assert tenant.graph_requests == {"200": 5}
    assert refresh.stop() == 0


def test_a_ca_changes_only_when_its_whole_read_completed(
    sim: Simulator, refresher: tuple[Refresher, Store]
) -> None:
    refresh, store = refresher
    refresh.refresh_all()
    before = store.tenants[TENANT].cas[CA_A].snapshot
    assert before is not None
    sim.clear_log()
    held = sim.faults.add(Fault(kind="slow", delay=1.0, ca_id=CA_A, page=2, times=1))
    second = threading.Thread(target=refresh.refresh_all)
    second.start()
    wait_until(lambda: sim.faults.fired(held), "the last page of CA A was not asked for")
    # Two of three pages are read: the store still serves the previous snapshot whole.
    assert store.tenants[TENANT].cas[CA_A].snapshot is before
    second.join(10)
    after = store.tenants[TENANT].cas[CA_A].snapshot
    assert after is not None and after is not before
    assert after.leaves.total == 2500


def test_a_failed_ca_keeps_its_data_and_counts_the_failure(
    sim: Simulator, refresher: tuple[Refresher, Store]
) -> None:
    refresh, store = refresher
    refresh.refresh_all()
    good = store.tenants[TENANT].cas[CA_A].snapshot
    sim.faults.add(Fault(kind="page_error", status=404, ca_id=CA_A, page=1))
    refresh.refresh_all()
    failed = store.tenants[TENANT].cas[CA_A]
    assert failed.snapshot is good  # the last good data stays exported
    assert (failed.last_success, dict(failed.failures)) == (
        False,
        {**NO_FAILURES, "http_4xx": 1},
    )
    assert failed.last_error is not None
    assert failed.last_error.startswith(
        f"POST /beta/deviceManagement/cloudCertificationAuthority/{CA_A}/"
        "getAllCloudCertificationAuthorityLeafCertificates?…: HTTP 404 "
    )
    other = store.tenants[TENANT].cas[CA_B]
    assert (other.last_success, dict(other.failures)) == (True, NO_FAILURES)
    assert store.tenants[TENANT].up


def test_a_refused_token_takes_the_tenant_down_and_fails_its_cas(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(
        sim, tmp_path, certification_authorities=[{"id": CA_A, "name": "Configured A"}]
    )
    sim.faults.add(Fault(kind="token_error"))
    store = Store([TENANT])
    refresh = Refresher(config, store)
    try:
        refresh.refresh_all()
    finally:
        refresh.stop()
    tenant = store.tenants[TENANT]
    assert (tenant.up, tenant.attempted) == (False, True)
    assert tenant.last_error is not None and tenant.last_error.startswith("token: invalid_client: ")
    (only,) = tenant.cas.values()
    assert (only.ca_id, only.label, only.snapshot, dict(only.failures)) == (
        CA_A,
        "Configured A",
        None,
        {**NO_FAILURES, "auth": 1},
    )
    assert [
        e.endpoint for e in sim.log if e.endpoint not in ("token", "openid_configuration")
    ] == []


# --------------------------------------------------------------------------- stop


def test_stop_ends_retry_waits_at_once_and_records_nothing(
    sim: Simulator, refresher: tuple[Refresher, Store]
) -> None:
    refresh, store = refresher
    # 10 s to wait (within the 25 s a CA read may take): the worker sleeps on it.
    throttle = sim.faults.add(Fault(kind="throttle", retry_after="10", ca_id=CA_A))
    refresh.start()
    wait_until(lambda: sim.faults.fired(throttle), "CA A was not asked for")
    assert refresh.stop(timeout=5.0) == 0  # every thread finished: none left behind
    assert store.tenants[TENANT].cas[CA_A].failures == NO_FAILURES
    assert not [t for t in threading.enumerate() if t.name.startswith(("pki-ca", "pki-tenant"))]


def test_stop_cancels_budget_waits(sim: Simulator, tmp_path: Path) -> None:
    # One POST a window: CA B's page waits 20 s for its slot when the stop comes.
    config = write_config(sim, tmp_path, graph_budget={"requests_per_20s": 10, "writes_per_20s": 1})
    store = Store([TENANT])
    refresh = Refresher(config, store)
    refresh.start()
    wait_until(
        lambda: (
            store.tenants[TENANT].budget_wait_seconds > 0
            or len([e for e in sim.log if e.endpoint == "leaves"]) == 1
        ),
        "no leaf page was read",
    )
    time.sleep(0.2)  # the other CA's worker reaches its 20 s wait for a slot
    assert refresh.stop(timeout=5.0) == 0
    assert {ca.failures == NO_FAILURES for ca in store.tenants[TENANT].cas.values()} == {True}
    assert len([e for e in sim.log if e.endpoint == "leaves"]) == 1


def test_stop_leaves_a_hung_request_behind_within_its_bound(
    sim: Simulator, refresher: tuple[Refresher, Store], caplog: pytest.LogCaptureFixture
) -> None:
    refresh, store = refresher
    hung = sim.faults.add(Fault(kind="slow", delay=30.0, ca_id=CA_A, page=0))
    refresh.start()
    wait_until(lambda: sim.faults.fired(hung), "CA A was not asked for")
    with caplog.at_level("INFO", logger="pki_exporter.refresher"):
        # (2 s: the other threads end within a quarter of a second of the stop, on a loaded
        # machine later; the request hung for 30 s is the one left behind.)
        assert refresh.stop(timeout=2.0) == 1  # the worker blocked on CA A's first page
    (record,) = [
        r for r in caplog.records if r.getMessage() == "abandoning Graph requests in flight"
    ]
    assert record.fields == {"threads": 1}  # type: ignore[attr-defined]
    busy = [t for t in threading.enumerate() if t.name.startswith("pki-ca")]
    assert [t.daemon for t in busy] == [True]  # it does not hold the interpreter's exit
    assert store.tenants[TENANT].cas[CA_A].snapshot is None
