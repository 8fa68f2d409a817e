"""pki_exporter.graph.client: GraphClient against the in-process simulator over real TLS.

Paging, the pin on ``@odata.nextLink``, retries and their classification, the request
budget, cancellation and the navigation source, each asserted on what the simulator saw.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pki_simulator import Fault, Simulator

from pki_exporter import outbound
from pki_exporter.aggregate.certificates import Fold
from pki_exporter.graph.budget import GraphBudget
from pki_exporter.graph.client import (
    NAVIGATION_PREFER,
    NAVIGATION_QUERY,
    Cancelled,
    GraphClient,
    GraphError,
)
from pki_exporter.graph.credentials import ConfidentialTokens
from pki_exporter.graph.retry import RetryPolicy
from tests.inproc import ANCHOR, CA_A, CA_B, ca, one_tenant, tenant_config

pytestmark = pytest.mark.timeout(60)

#: Retries without real waiting: the policy's backoff is milliseconds.
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator.from_spec(one_tenant(ca(CA_A, "Issuing A", 2500), ca(CA_B, "B", 10)))
    simulator.start()
    yield simulator
    simulator.close()


@pytest.fixture
def client(sim: Simulator, tmp_path: Path) -> Iterator[Callable[..., GraphClient]]:
    made: list[GraphClient] = []

    def make(**kwargs: Any) -> GraphClient:
        tenant = tenant_config(sim, tmp_path, leaf_source=kwargs.pop("leaf_source", "action"))
        kwargs.setdefault("policy", FAST)
        graph = GraphClient(
            tenant.graph_url,
            ConfidentialTokens(tenant, 5.0),
            timeout=kwargs.pop("timeout", 5.0),
            ca_bundle=tenant.ca_bundle,
            leaf_source=tenant.leaf_source,
            **kwargs,
        )
        made.append(graph)
        return graph

    yield make
    for graph in made:
        graph.close()


def later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def fold() -> Fold:
    return Fold(ANCHOR.timestamp(), (7, 30, 90))


def graph_log(sim: Simulator) -> list[tuple[str, str, int | None, int]]:
    """(endpoint, method, page, status) of every Graph request, in order."""
    return [
        (e.endpoint, e.method, e.page, e.status)
        for e in sim.log
        if e.endpoint not in ("token", "openid_configuration", "instance_discovery")
    ]


# --------------------------------------------------------------------------- paging


def test_every_page_of_the_leaf_action_is_folded_once(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    f = fold()
    assert client().fold_leaves(CA_A, f, later()) == 3
    assert f.result().total == 2500
    assert graph_log(sim) == [
        ("leaves", "POST", 0, 200),
        ("leaves", "POST", 1, 200),
        ("leaves", "POST", 2, 200),
    ]


def test_list_and_get_cas(sim: Simulator, client: Callable[..., GraphClient]) -> None:
    graph = client()
    listed = graph.list_cas(later())
    assert sorted((c["id"], c["displayName"]) for c in listed) == [
        (CA_A, "Issuing A"),
        (CA_B, "B"),
    ]
    assert graph.get_ca(CA_B, later())["displayName"] == "B"
    assert [e[:2] for e in graph_log(sim)] == [("ca_list", "GET"), ("ca_get", "GET")]


def test_a_ca_id_that_is_not_a_guid_is_refused_before_any_request(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    with pytest.raises(GraphError) as caught:
        client().get_ca("../../users", later())
    assert caught.value.reason == "invalid_response"
    assert str(caught.value) == "CA id '../../users' is not a GUID"
    assert sim.log == []


def test_navigation_source_gets_the_same_records_with_select(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    f = fold()
    pages = client(leaf_source="navigation").fold_leaves(CA_A, f, later())
    assert f.result().total == 2500
    entries = [e for e in sim.log if e.endpoint == "leaves_nav"]
    assert pages == len(entries) == 3  # 999 records a page at most
    assert {(e.method, e.prefer) for e in entries} == {("GET", NAVIGATION_PREFER)}
    assert entries[0].query == NAVIGATION_QUERY


# --------------------------------------------------------------------------- nextLink


def test_a_next_link_to_another_host_is_refused(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    sim.faults.add(Fault(kind="foreign_next_link", ca_id=CA_A, page=0))
    with pytest.raises(GraphError) as caught:
        client().fold_leaves(CA_A, fold(), later())
    assert caught.value.reason == "invalid_response"
    assert str(caught.value) == (
        "refused @odata.nextLink to https://another-host.invalid: not the configured Graph root"
    )
    assert graph_log(sim) == [("leaves", "POST", 0, 200)]  # the token went nowhere else


# --------------------------------------------------------------------------- retries


def test_throttling_is_retried_and_counted(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    sim.faults.add(Fault(kind="throttle", retry_after="0", times=2, ca_id=CA_B))
    statuses: list[int] = []
    f = fold()
    assert client(on_response=statuses.append).fold_leaves(CA_B, f, later()) == 1
    assert f.result().total == 10
    assert statuses == [429, 429, 200]
    assert graph_log(sim) == [("leaves", "POST", 0, s) for s in (429, 429, 200)]


@pytest.mark.parametrize(
    ("status", "reason", "requests"),
    [(503, "http_5xx", 3), (500, "http_5xx", 3), (404, "http_4xx", 1), (403, "auth", 1)],
)
def test_failures_are_classified_and_retried_only_when_worth_it(
    sim: Simulator,
    client: Callable[..., GraphClient],
    status: int,
    reason: str,
    requests: int,
) -> None:
    sim.faults.add(Fault(kind="page_error", status=status, ca_id=CA_B))
    with pytest.raises(GraphError) as caught:
        client().fold_leaves(CA_B, fold(), later())
    assert (caught.value.reason, caught.value.status) == (reason, status)
    assert graph_log(sim) == [("leaves", "POST", 0, status)] * requests


def test_a_hung_request_times_out_as_timeout(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    sim.faults.add(Fault(kind="slow", delay=5.0, ca_id=CA_B, times=3))
    with pytest.raises(GraphError) as caught:
        client(timeout=0.2).fold_leaves(CA_B, fold(), later())
    assert caught.value.reason == "timeout"
    assert str(caught.value).startswith("POST /beta/deviceManagement/cloudCertificationAuthority/")


def test_a_retry_that_would_pass_the_deadline_is_not_waited_for(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    sim.faults.add(Fault(kind="throttle", retry_after="120", ca_id=CA_B))
    began = time.monotonic()
    with pytest.raises(GraphError) as caught:
        client().fold_leaves(CA_B, fold(), later(10))
    assert caught.value.reason == "throttled"
    assert str(caught.value).endswith("(retry in 120.0s would pass the deadline)")
    assert time.monotonic() - began < 10  # not waited for: the deadline is 10 s away
    assert graph_log(sim) == [("leaves", "POST", 0, 429)]


def test_a_retry_with_no_time_to_be_answered_is_not_sent(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    """Retry-After: 0 with 0.45 s of the deadline left: a retry would be cut off before
    Graph could answer it, and turn the 429 into a timeout. The 429 is the outcome."""
    graph = client()
    # The token and a connection first: the deadline below is for the page alone.
    graph.get_ca(CA_B, later())
    sim.faults.add(Fault(kind="throttle", retry_after="0", ca_id=CA_B))
    with pytest.raises(GraphError) as caught:
        graph.fold_leaves(CA_B, fold(), later(0.45))
    assert (caught.value.reason, caught.value.status) == ("throttled", 429)
    assert str(caught.value).endswith("(retry in 0.0s would pass the deadline)")
    assert graph_log(sim)[-1:] == [("leaves", "POST", 0, 429)]


# --------------------------------------------------------------------------- budget, stop


class FakeTime:
    """The budget's clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # request deadlines are monotonic: start from there
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        return False


def test_every_request_takes_a_slot_of_the_budget(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    fake = FakeTime()
    budget = GraphBudget(2, 1, clock=fake.clock, sleep=fake.sleep)
    f = fold()
    # One write a window, three pages: two waits of 20 s (on the fake clock only).
    client(budget=budget).fold_leaves(CA_A, f, later(100))
    assert f.result().total == 2500
    assert fake.slept == [20.0, 20.0]


def test_a_budget_with_no_slot_before_the_deadline_fails_as_timeout(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    fake = FakeTime()
    budget = GraphBudget(2, 1, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(GraphError) as caught:
        client(budget=budget).fold_leaves(CA_A, fold(), later(10))
    assert caught.value.reason == "timeout"
    assert "the tenant's graph_budget has no slot for 20.0s" in str(caught.value)
    assert graph_log(sim) == [("leaves", "POST", 0, 200)]


def test_a_retry_with_no_slot_in_time_keeps_the_answer_graph_gave(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    """The 429's retry would wait 20 s for the budget's one write slot: Graph's answer is
    the outcome (not a budget timeout), and nothing more is sent."""
    sim.faults.add(Fault(kind="throttle", retry_after="0", ca_id=CA_B, times=1))
    fake = FakeTime()
    budget = GraphBudget(2, 1, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(GraphError) as caught:
        client(budget=budget).fold_leaves(CA_B, fold(), later(10))
    assert (caught.value.reason, caught.value.status) == ("throttled", 429)
    assert str(caught.value).endswith("(the retry would pass the deadline)")
    assert fake.slept == []
    assert graph_log(sim) == [("leaves", "POST", 0, 429)]


def test_a_cancelled_budget_wait_ends_the_read(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    budget = GraphBudget(1, 1)  # real clock: the second page waits 20 s for its slot
    graph = client(budget=budget)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            graph.fold_leaves(CA_A, fold(), later())
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = later(10)
    while not [e for e in sim.log if e.endpoint == "leaves"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    budget.cancel()
    reader.join(5)
    assert not reader.is_alive()
    assert [type(e) for e in outcome] == [Cancelled]
    assert graph_log(sim) == [("leaves", "POST", 0, 200)]


def test_the_stop_event_ends_a_retry_wait(
    sim: Simulator, client: Callable[..., GraphClient]
) -> None:
    stop = threading.Event()
    sim.faults.add(Fault(kind="throttle", retry_after="20", ca_id=CA_B))
    graph = client(stop=stop)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            graph.fold_leaves(CA_B, fold(), later(60))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = later(10)
    while not graph_log(sim):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop.set()
    reader.join(5)
    assert not reader.is_alive()
    assert [type(e) for e in outcome] == [Cancelled]


# --------------------------------------------------------------------------- the route


class _StaticTokens:
    """A token provider that never calls out: the Graph side alone is under test."""

    def token(self) -> str:
        return "static-token-for-the-route-tests"

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_graph_on_a_closed_port_names_host_port_and_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = f"https://127.0.0.1:{port}"
    graph = GraphClient(root, _StaticTokens(), timeout=5.0, policy=FAST, route=outbound.Route())
    try:
        with pytest.raises(GraphError) as caught:
            graph.list_cas(later())
    finally:
        graph.close()
    url = f"{root}/beta/deviceManagement/cloudCertificationAuthority"
    assert caught.value.reason == "network"
    assert str(caught.value) == (
        "GET /beta/deviceManagement/cloudCertificationAuthority: connection refused by "
        f"127.0.0.1:{port} (tried {url})"
    )


def test_graph_without_ca_bundle_names_ca_bundle(sim: Simulator) -> None:
    graph = GraphClient(sim.url, _StaticTokens(), timeout=5.0, policy=FAST, route=outbound.Route())
    try:
        with pytest.raises(GraphError) as caught:
            graph.list_cas(later())
    finally:
        graph.close()
    assert str(caught.value) == (
        f"GET /beta/deviceManagement/cloudCertificationAuthority: TLS to 127.0.0.1:{sim.port}: "
        "certificate verify failed: unable to get local issuer certificate (add the CA that "
        "issued the server's certificate to ca_bundle)"
    )
    assert [e for e in sim.log if e.endpoint != "control"] == []


def test_a_dead_environment_proxy_fails_graph_naming_it(sim: Simulator) -> None:
    """Without a route, the client reads the environment's proxy (as httpx used to)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    route = outbound.Route(
        ca_bundle=str(sim.ca_bundle_path), environ={**os.environ, "HTTPS_PROXY": proxy}
    )
    graph = GraphClient(sim.url, _StaticTokens(), timeout=5.0, policy=FAST, route=route)
    try:
        with pytest.raises(GraphError) as caught:
            graph.list_cas(later())
    finally:
        graph.close()
    assert caught.value.reason == "network"
    assert str(caught.value) == (
        f"GET /beta/deviceManagement/cloudCertificationAuthority: via proxy {proxy}: cannot "
        f"connect to the proxy: connection refused (is it running? tried {sim.url}"
        "/beta/deviceManagement/cloudCertificationAuthority)"
    )
