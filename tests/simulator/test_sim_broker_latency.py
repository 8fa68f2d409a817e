"""Intune's query-broker 500s, per-page latency, and their CLI and control API."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from pki_simulator import Fault, Simulator
from pki_simulator.faults import parse_cli_fault
from pki_simulator.limits import parse_page_latency

from tests.exporter_proc import reap

from .helpers import ACTION, GraphClient, tls
from .test_sim_control import _field, _read_until

NAV = "cloudCertificationAuthorityLeafCertificate"


@pytest.fixture
def control(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{sim.url}/_simulator", verify=tls(sim), trust_env=False) as client:
        yield client


@pytest.fixture
def no_latency(sim: Simulator) -> Iterator[None]:
    yield
    sim.set_page_latency(None)


def chain(graph: GraphClient, ca_id: str, tries: int) -> list[list[httpx.Response]]:
    """Each page of the action, asked ``tries`` times (the last answer must be 200)."""
    pages: list[list[httpx.Response]] = []
    url, method = graph.url(f"/{ca_id}/{ACTION}"), "POST"
    while url:
        answers = [graph.http.request(method, url) for _ in range(tries)]
        pages.append(answers)
        assert answers[-1].status_code == 200, answers[-1].text
        url, method = answers[-1].json().get("@odata.nextLink"), "GET"
    return pages


def test_query_broker_k_500s_per_page_then_success(sim: Simulator, graph: GraphClient) -> None:
    fault = sim.faults.add(Fault(kind="query_broker", attempts=2))
    first, second = sim.tenants[0].cas[0].id, sim.tenants[0].cas[1].id
    for ca_id in (first, second):
        pages = chain(graph, ca_id, 3)
        assert [[a.status_code for a in page] for page in pages] == [[500, 500, 200]] * 3
        for answer in (a for page in pages for a in page[:2]):
            assert "Retry-After" not in answer.headers
            error = answer.json()["error"]
            assert error["code"] == "InternalServerError"
            inner = json.loads(error["message"])
            assert inner["_version"] == 3 and inner["RetryAfter"] is None
            assert inner["Message"].startswith("An internal server error has occurred - ")
            assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    # once a page got through, it stays through
    assert graph.http.post(graph.url(f"/{first}/{ACTION}")).status_code == 200
    # the navigation property is another source: its pages get their own k 500s
    nav = graph.url(f"/{first}/{NAV}")
    assert [graph.http.get(nav).status_code for _ in range(3)] == [500, 500, 200]
    # not leaf pages: untouched
    assert graph.http.get(graph.url()).status_code == 200
    assert graph.http.get(nav + "/$count").status_code == 200
    assert sim.faults.fired(fault) == 14
    leaves = [e for e in sim.log if e.endpoint in ("leaves", "leaves_nav")]
    assert [e.fault for e in leaves].count("query_broker") == 14
    assert [(e.page, e.status) for e in leaves[:3]] == [(0, 500), (0, 500), (0, 200)]


def test_query_broker_with_times_page_and_retry_after(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    capped = sim.faults.add(Fault(kind="query_broker", attempts=3, times=4, retry_after=5))
    pages = chain(graph, ca_id, 4)
    statuses = [[a.status_code for a in page] for page in pages]
    assert statuses == [[500, 500, 500, 200], [500, 200, 200, 200], [200] * 4]
    assert all("Retry-After" not in a.headers for page in pages for a in page)
    assert sim.faults.fired(capped) == 4
    assert sim.faults.active() == []
    sim.faults.add(Fault(kind="query_broker", page=1, ca_id=ca_id))  # attempts default 1
    statuses = [[a.status_code for a in page] for page in chain(graph, ca_id, 2)]
    assert statuses == [[200, 200], [500, 200], [200, 200]]


def test_query_broker_from_the_cli_syntax_and_the_control_api(
    sim: Simulator, graph: GraphClient, control: httpx.Client
) -> None:
    parsed = parse_cli_fault("query_broker:attempts=2,page=0")
    assert (parsed.kind, parsed.attempts, parsed.page) == ("query_broker", 2, 0)
    with pytest.raises(ValueError, match="fault attempts: only for query_broker"):
        parse_cli_fault("throttle:attempts=2")
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        Fault(kind="query_broker", attempts=0)
    created = control.post("/faults", content=json.dumps({"kind": "query_broker", "attempts": 1}))
    assert created.status_code == 201
    assert created.json()["fault"]["attempts"] == 1
    ca_id = sim.tenants[0].cas[0].id
    statuses = [graph.http.post(graph.url(f"/{ca_id}/{ACTION}")).status_code for _ in range(2)]
    assert statuses == [500, 200]


def test_fixed_latency_shows_in_the_log(
    sim: Simulator, graph: GraphClient, no_latency: None
) -> None:
    ca_id = sim.tenants[0].cas[0].id
    sim.set_page_latency(0.2)
    assert sim.page_latency == (0.2, 0.2)
    chain(graph, ca_id, 1)
    graph.http.get(graph.url(f"/{ca_id}/{NAV}"))
    pages = [e for e in sim.log if e.endpoint in ("leaves", "leaves_nav")]
    assert [e.endpoint for e in pages] == ["leaves"] * 3 + ["leaves_nav"]
    assert all(e.duration >= 0.2 for e in pages)
    sim.set_page_latency((0.05, 0.1))
    sim.clear_log()
    chain(graph, ca_id, 1)
    assert all(e.duration >= 0.05 for e in sim.log)


def test_latency_sleeps_hold_no_lock(sim: Simulator, no_latency: None) -> None:
    """Four pages asked at once are all in flight at the same time (their logged
    intervals overlap), so one sleeping page does not hold up the others."""
    sim.set_page_latency(0.5)
    ca_id = sim.tenants[0].cas[0].id
    clients = [GraphClient(sim, sim.tenants[0]) for _ in range(4)]
    sim.clear_log()
    barrier = threading.Barrier(4)

    def fetch(client: GraphClient) -> None:
        barrier.wait()
        assert client.http.post(client.url(f"/{ca_id}/{ACTION}")).status_code == 200

    threads = [threading.Thread(target=fetch, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    entries = [e for e in sim.log if e.endpoint == "leaves"]
    assert len(entries) == 4
    assert max(e.monotonic for e in entries) < min(e.monotonic + e.duration for e in entries)


def test_latency_values(sim: Simulator, control: httpx.Client, no_latency: None) -> None:
    assert parse_page_latency("0.15-0.4") == (0.15, 0.4)
    assert parse_page_latency("0.2") == (0.2, 0.2)
    assert parse_page_latency("0") is None
    for bad in ("x", "0.4-0.1", "-1", "1-"):
        with pytest.raises(ValueError, match="expected SECONDS or LOW-HIGH"):
            parse_page_latency(bad)
    for value in (-1.0, (0.4, 0.1), (1.0,), "0.2"):
        with pytest.raises(ValueError, match="page latency"):
            sim.set_page_latency(value)  # type: ignore[arg-type]
    assert control.get("/page-latency").json() == {"page_latency": None}
    put = control.put("/page-latency", content=json.dumps({"page_latency": [0.1, 0.2]}))
    assert put.json() == {"page_latency": [0.1, 0.2]}
    assert sim.page_latency == (0.1, 0.2)
    fixed = control.put("/page-latency", content=json.dumps({"page_latency": 0.3}))
    assert fixed.json() == {"page_latency": [0.3, 0.3]}
    assert control.get("/info").json()["page_latency"] == [0.3, 0.3]
    bad = control.put("/page-latency", content=json.dumps({"page_latency": [1, 0]}))
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("page latency: need 0 <= low <= high")
    assert control.delete("/page-latency").json() == {"page_latency": None}
    assert sim.page_latency is None


def test_latency_draws_are_seeded(sim: Simulator, no_latency: None) -> None:
    """Same seed, same draws: two simulators of one data set wait the same."""
    draws = []
    for _ in range(2):
        other = Simulator(sim.spec, page_latency=(0.0, 1.0))
        draws.append([other.draw_page_latency() for _ in range(5)])
        other.close()
    assert draws[0] == draws[1] and len(set(draws[0])) == 5
    assert all(0.0 <= d <= 1.0 for d in draws[0])


def test_the_command_takes_limits_and_latency() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CA_BUNDLE")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pki_simulator", "--port", "0", "--cas", "1", "--certificates", "20",
            "--page-size", "10", "--seed", "4", "--anchor", "2025-06-01T12:00:00Z",
            "--graph-limits", "5/1/20", "--page-latency", "0.05-0.1",
            "--fault", "query_broker:attempts=1", "--warm-navigation", "id,deviceId",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        lines = _read_until(process, "Serving until interrupted")
        assert "Graph limits:   5 requests, 1 writes per app; 10 / 2 per tenant; 20 s windows" in (
            lines
        )
        assert "Page latency:   0.05-0.1 s per leaf page" in lines
        url = _field(lines, "Graph URL")
        bundle = _field(lines, "CA bundle")
        context = ssl.create_default_context(cafile=bundle)
        with httpx.Client(verify=context, trust_env=False) as plain:
            info = plain.get(f"{url}/_simulator/info").json()
            token = plain.post(
                f"{url}/{info['tenants'][0]['tenant_id']}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": info["tenants"][0]["client_id"],
                    "client_secret": _field(lines, "Client secret"),
                    "scope": f"{url}/.default",
                },
            ).json()["access_token"]
            assert info["limits"]["app_writes"] == 1
            assert info["page_latency"] == [0.05, 0.1]
            leaf = f"{url}/beta/deviceManagement/cloudCertificationAuthority/"
            leaf += f"{info['cas'][0]['ca_id']}/{ACTION}"
            auth = {"Authorization": f"Bearer {token}"}
            # the 500 took the only write slot of the window: the retry is throttled
            assert [plain.post(leaf, headers=auth).status_code for _ in range(2)] == [500, 429]
    finally:
        code = reap(process)  # SIGTERM; killed (and failed) if not gone within 10 s
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--graph-limits", "lots"], "graph limits 'lots'"),
        (["--page-latency", "slow"], "page latency 'slow'"),
        (["--warm-navigation", "id,nope"], "unknown leaf field 'nope'"),
    ],
)
def test_the_command_refuses_bad_values(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pki_simulator", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
