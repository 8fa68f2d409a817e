"""Each fault does what it says, as many times as it says, where it says."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from pki_simulator import Fault, Simulator

from .helpers import ACTION, GraphClient, fetch_token, tls


def _leaves(graph: GraphClient, ca_id: str) -> httpx.Response:
    return graph.http.post(graph.url(f"/{ca_id}/{ACTION}"))


def _page(graph: GraphClient, ca_id: str, page: int) -> httpx.Response:
    response = _leaves(graph, ca_id)
    for _ in range(page):
        response = graph.http.get(response.json()["@odata.nextLink"])
    return response


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("throttle", 429, "TooManyRequests"),
        ("unavailable", 503, "ServiceUnavailable"),
        ("gateway_timeout", 504, "GatewayTimeout"),
    ],
)
@pytest.mark.parametrize("retry_after", [None, 3, "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retryable_statuses_with_and_without_retry_after(
    sim: Simulator,
    graph: GraphClient,
    kind: str,
    status: int,
    code: str,
    retry_after: int | str | None,
) -> None:
    ca_id = sim.tenants[0].cas[0].id
    fault = sim.faults.add(Fault(kind=kind, retry_after=retry_after, times=2))  # type: ignore[arg-type]
    answers = [_leaves(graph, ca_id) for _ in range(3)]
    assert [a.status_code for a in answers] == [status, status, 200]
    assert answers[0].json()["error"]["code"] == code
    if retry_after is None:
        assert "Retry-After" not in answers[0].headers
    else:
        assert answers[0].headers["Retry-After"] == str(retry_after)
    assert sim.faults.fired(fault) == 2
    assert sim.faults.active() == []
    assert [e.fault for e in sim.log] == [kind, kind, None]


def test_fault_filters_tenant_ca_and_page(sim: Simulator, graph: GraphClient) -> None:
    first, second = sim.tenants[0].cas[0].id, sim.tenants[0].cas[1].id
    sim.faults.add(Fault(kind="throttle", ca_id=second, page=1))
    sim.faults.add(Fault(kind="throttle", tenant_id="00000000-0000-4000-8000-000000000000"))
    assert [len(p.body["value"]) for p in graph.leaf_pages(first)] == [50, 50, 20]
    assert _page(graph, second, 0).status_code == 200
    assert _page(graph, second, 1).status_code == 429
    assert _page(graph, second, 1).status_code == 429  # times=None: until cleared
    sim.faults.clear()
    assert _page(graph, second, 1).status_code == 200


def test_slow_delays_the_answer(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    sim.faults.add(Fault(kind="slow", delay=0.3, times=1))
    started = time.monotonic()
    assert _leaves(graph, ca_id).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert _leaves(graph, ca_id).status_code == 200
    assert time.monotonic() - started < 0.3
    assert [e.fault for e in sim.log] == ["slow", None]


def test_slow_makes_a_client_time_out(sim: Simulator, graph: GraphClient) -> None:
    sim.faults.add(Fault(kind="slow", delay=1.0, times=1))
    with pytest.raises(httpx.ReadTimeout):
        graph.http.get(graph.url(), timeout=0.2)


@pytest.mark.parametrize("gzip", [True, False])
def test_reset_mid_body_is_a_transport_error(sim: Simulator, gzip: bool) -> None:
    graph = GraphClient(sim, sim.tenants[0], gzip=gzip)
    try:
        ca_id = sim.tenants[0].cas[0].id
        sim.faults.add(Fault(kind="reset", page=0, times=1))
        with pytest.raises(httpx.TransportError):
            _leaves(graph, ca_id)
        assert _leaves(graph, ca_id).status_code == 200
    finally:
        graph.close()
    reset = [e for e in sim.log if e.fault == "reset"]
    assert len(reset) == 1
    assert reset[0].bytes_sent > 0


def test_malformed_json(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    sim.faults.add(Fault(kind="malformed_json", ca_id=ca_id, times=1))
    broken = _leaves(graph, ca_id)
    assert broken.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)
    assert json.loads(_leaves(graph, ca_id).content)["value"]


def test_page_error_every_time(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    sim.faults.add(Fault(kind="page_error", ca_id=ca_id, page=2))
    first = _leaves(graph, ca_id)
    second = graph.http.get(first.json()["@odata.nextLink"])
    link = second.json()["@odata.nextLink"]
    failures = [graph.http.get(link) for _ in range(4)]
    assert [f.status_code for f in failures] == [500] * 4
    assert failures[0].json()["error"]["code"] == "InternalServerError"
    assert _leaves(graph, sim.tenants[0].cas[1].id).status_code == 200
    sim.faults.add(Fault(kind="page_error", page=0, status=502, times=1))
    assert _leaves(graph, ca_id).status_code == 502


def test_ca_gone_and_back(sim: Simulator, graph: GraphClient) -> None:
    gone = sim.tenants[0].cas[1].id
    fault = sim.remove_ca(gone)
    assert fault.kind == "ca_gone"
    assert gone not in [c["id"] for c in graph.list_cas()]
    assert graph.http.get(graph.url(f"/{gone}")).status_code == 404
    assert _leaves(graph, gone).status_code == 404
    assert gone not in {ca.spec.id for ca in sim.visible_cas()}
    sim.restore_ca(gone)
    assert gone in [c["id"] for c in graph.list_cas()]
    assert _leaves(graph, gone).status_code == 200


@pytest.mark.parametrize("base", [None, "https://127.0.0.1:1"])
def test_foreign_next_link(sim: Simulator, graph: GraphClient, base: str | None) -> None:
    ca_id = sim.tenants[0].cas[0].id
    sim.faults.add(Fault(kind="foreign_next_link", ca_id=ca_id, page=1, next_link_base=base))
    first = _leaves(graph, ca_id).json()
    assert first["@odata.nextLink"].startswith(sim.url)
    second = graph.http.get(first["@odata.nextLink"]).json()
    expected = base or "https://another-host.invalid"
    assert second["@odata.nextLink"].startswith(expected + "/beta/deviceManagement/")
    # the records are untouched
    assert len(second["value"]) == 50


def test_faults_on_the_token_endpoint(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    sim.faults.add(Fault(kind="throttle", target="token", retry_after=1, times=1))
    sim.faults.add(Fault(kind="unavailable", target="token", times=1))
    url = f"{sim.url}/{tenant.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
        "scope": f"{sim.url}/.default",
    }
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        statuses = [client.post(url, data=form).status_code for _ in range(3)]
    assert statuses == [429, 503, 200]
    # a graph-only fault leaves the token endpoint alone
    sim.faults.add(Fault(kind="throttle"))
    assert fetch_token(sim, tenant)


def test_faults_given_at_construction() -> None:
    with Simulator.generate(cas=1, certificates=3, faults=[Fault(kind="throttle", times=1)]) as sim:
        graph = GraphClient(sim, sim.tenants[0])
        try:
            statuses = [graph.http.get(graph.url()).status_code for _ in range(2)]
        finally:
            graph.close()
    assert statuses == [429, 200]


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "nope"},
        {"kind": "throttle", "times": 0},
        {"kind": "slow"},
        {"kind": "ca_gone"},
        {"kind": "throttle", "bogus": 1},
        {"kind": "throttle", "page": "x"},
    ],
)
def test_invalid_faults_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault.from_mapping(bad)
