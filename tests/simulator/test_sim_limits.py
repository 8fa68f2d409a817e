"""Graph's request limits: sliding windows per app and per tenant, 429 with Retry-After."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pki_simulator import GraphLimits, Simulator
from pki_simulator.limits import Limiter, max_in_window

from .helpers import ACTION, ANCHOR, PREFIX, ManualClock, fetch_token, tls

OTHER_APP = "9e9e9e9e-0000-4000-8000-0000000000a2"


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture(scope="module")
def limited(clock: ManualClock) -> Iterator[Simulator]:
    sim = Simulator.generate(
        seed=11, tenants=2, cas=2, certificates=30, page_size=10, anchor=ANCHOR, limits_clock=clock
    )
    sim.start()
    yield sim
    sim.close()


@pytest.fixture
def sim(limited: Simulator, clock: ManualClock) -> Iterator[Simulator]:
    clock.now = 1000.0
    limited.set_limits(None)
    limited.limiter.reset()
    limited.clear_log()
    yield limited
    limited.set_limits(None)
    limited.limiter.reset()


def client(sim: Simulator, token: str) -> httpx.Client:
    return httpx.Client(
        verify=tls(sim),
        trust_env=False,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


@pytest.fixture
def app(sim: Simulator) -> Iterator[httpx.Client]:
    with client(sim, fetch_token(sim, sim.tenants[0])) as http:
        yield http


def action(sim: Simulator, n: int = 0) -> str:
    return f"{sim.url}{PREFIX}/{sim.tenants[0].cas[n].id}/{ACTION}"


def test_writes_exact_429s_and_retry_after(
    sim: Simulator, clock: ManualClock, app: httpx.Client
) -> None:
    sim.set_limits(GraphLimits(100, 5, 200, 10, window=2.0))
    statuses = []
    for _ in range(5):
        statuses.append(app.post(action(sim)).status_code)
        clock.now += 0.1
    assert statuses == [200] * 5
    assert clock.now == pytest.approx(1000.5)
    throttled = [app.post(action(sim), headers={"client-request-id": "cr-1"}) for _ in range(2)]
    assert [r.status_code for r in throttled] == [429, 429]
    # the oldest write (t=1000.0) leaves the 2 s window at 1002.0: 1.5 s -> 2
    assert [r.headers["Retry-After"] for r in throttled] == ["2", "2"]
    body = throttled[0].json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "TooManyRequests"
    assert body["error"]["message"] == (
        "Too many requests: this application of this tenant may send at most 5 write "
        "requests per 2 seconds."
    )
    inner = body["error"]["innerError"]
    assert set(inner) == {"date", "request-id", "client-request-id"}
    assert inner["client-request-id"] == "cr-1"
    assert inner["request-id"] == throttled[0].headers["request-id"]
    clock.now = 1001.3
    again = app.post(action(sim))
    assert (again.status_code, again.headers["Retry-After"]) == (429, "1")  # 0.7 s -> 1
    # reads draw from the (not exhausted) requests window: a nextLink GET still works
    page0 = app.get(f"{sim.url}{PREFIX}")
    assert page0.status_code == 200
    clock.now = 1002.0  # the write at 1000.0 has left the window
    assert app.post(action(sim)).status_code == 200
    late = app.post(action(sim))
    assert (late.status_code, late.headers["Retry-After"]) == (429, "1")  # 1000.1 + 2 - 1002
    entries = [e for e in sim.log if e.endpoint == "leaves"]
    assert [e.status for e in entries] == [200] * 5 + [429] * 3 + [200, 429]
    assert [e.fault for e in entries if e.status == 429] == ["graph_limit"] * 4
    assert {e.app_id for e in entries} == {sim.tenants[0].client_id}
    assert all(e.monotonic > 0 for e in entries)
    assert [e.monotonic for e in entries] == sorted(e.monotonic for e in entries)


def test_reads_fill_the_requests_window_and_writes_count_in_it(
    sim: Simulator, clock: ManualClock, app: httpx.Client
) -> None:
    sim.set_limits(GraphLimits(3, 100, 100, 100, window=20.0))
    assert app.get(f"{sim.url}{PREFIX}").status_code == 200
    clock.now += 1
    assert app.post(action(sim)).status_code == 200
    clock.now += 1
    assert app.get(f"{sim.url}{PREFIX}").status_code == 200
    clock.now += 1
    refused = [app.get(f"{sim.url}{PREFIX}"), app.post(action(sim))]
    assert [r.status_code for r in refused] == [429, 429]
    # the request at 1000 frees its slot at 1020; now is 1003
    assert [r.headers["Retry-After"] for r in refused] == ["17", "17"]
    assert refused[0].json()["error"]["message"] == (
        "Too many requests: this application of this tenant may send at most 3 requests "
        "per 20 seconds."
    )


def test_fixed_retry_after_and_no_header(sim: Simulator, app: httpx.Client) -> None:
    sim.set_limits(GraphLimits(1, 1, 10, 10, window=20.0, retry_after=7))
    assert app.get(f"{sim.url}{PREFIX}").status_code == 200
    fixed = app.get(f"{sim.url}{PREFIX}")
    assert (fixed.status_code, fixed.headers["Retry-After"]) == (429, "7")
    sim.set_limits(GraphLimits(1, 1, 10, 10, window=20.0, send_retry_after=False))
    bare = app.get(f"{sim.url}{PREFIX}")
    assert bare.status_code == 429
    assert "Retry-After" not in bare.headers


def test_a_rejected_request_takes_no_slot(
    sim: Simulator, clock: ManualClock, app: httpx.Client
) -> None:
    sim.set_limits(GraphLimits(100, 2, 100, 100, window=2.0))
    assert app.post(action(sim)).status_code == 200  # 1000.0
    clock.now = 1000.5
    assert app.post(action(sim)).status_code == 200  # 1000.5
    clock.now = 1001.0
    assert [app.post(action(sim)).status_code for _ in range(10)] == [429] * 10
    clock.now = 1002.0  # only the write at 1000.0 left: one slot, not taken by the 429s
    assert app.post(action(sim)).status_code == 200
    clock.now = 1002.4
    assert app.post(action(sim)).status_code == 429
    clock.now = 1002.5
    assert app.post(action(sim)).status_code == 200


def test_per_app_and_per_tenant(sim: Simulator, app: httpx.Client) -> None:
    sim.set_limits(GraphLimits(100, 2, 100, 3, window=20.0))
    tenant = sim.tenants[0]
    other_token, _, _ = sim.authority.issue_access_token(tenant.tenant_id, OTHER_APP)
    with (
        client(sim, other_token) as other,
        client(sim, fetch_token(sim, sim.tenants[1])) as second_tenant,
    ):
        assert [app.post(action(sim)).status_code for _ in range(3)] == [200, 200, 429]
        first = other.post(action(sim))
        assert first.status_code == 200
        refused = other.post(action(sim))
        assert refused.status_code == 429  # the app has 1 write, the tenant all 3
        assert (
            "all applications of this tenant may send at most 3 write"
            in (refused.json()["error"]["message"])
        )
        other_ca = sim.tenants[1].cas[0].id
        assert second_tenant.post(f"{sim.url}{PREFIX}/{other_ca}/{ACTION}").status_code == 200
    apps = [(e.app_id, e.status) for e in sim.log if e.endpoint == "leaves"]
    assert apps == [
        (tenant.client_id, 200),
        (tenant.client_id, 200),
        (tenant.client_id, 429),
        (OTHER_APP, 200),
        (OTHER_APP, 429),
        (sim.tenants[1].client_id, 200),
    ]


def test_set_limits_at_run_time_keeps_the_windows(sim: Simulator, app: httpx.Client) -> None:
    assert sim.limits is None
    assert [app.post(action(sim)).status_code for _ in range(4)] == [200] * 4  # not counted
    sim.set_limits(GraphLimits(100, 3, 100, 100))
    assert [app.post(action(sim)).status_code for _ in range(4)] == [200, 200, 200, 429]
    sim.set_limits(GraphLimits(100, 5, 100, 100))
    assert [app.post(action(sim)).status_code for _ in range(3)] == [200, 200, 429]
    sim.set_limits(GraphLimits(100, 2, 100, 100))  # lowered below what the window holds
    lowered = app.post(action(sim))
    assert (lowered.status_code, lowered.headers["Retry-After"]) == (429, "20")
    sim.set_limits(None)
    assert app.post(action(sim)).status_code == 200


def test_token_openid_and_control_are_not_graph_requests(sim: Simulator, app: httpx.Client) -> None:
    sim.set_limits(GraphLimits(1, 1, 1, 1))
    tenant = sim.tenants[0]
    for _ in range(3):
        fetch_token(sim, tenant)
    with httpx.Client(verify=tls(sim), trust_env=False) as plain:
        config = plain.get(f"{sim.url}/{tenant.tenant_id}/v2.0/.well-known/openid-configuration")
        assert config.status_code == 200
        assert plain.get(f"{sim.url}/_simulator/info").status_code == 200
    assert app.get(f"{sim.url}{PREFIX}").status_code == 200
    assert app.get(f"{sim.url}{PREFIX}").status_code == 429
    assert [e.endpoint for e in sim.log if e.status == 429] == ["ca_list"]


def test_control_api_sets_and_clears_limits(sim: Simulator) -> None:
    with httpx.Client(verify=tls(sim), trust_env=False) as plain:
        base = f"{sim.url}/_simulator/limits"
        assert plain.get(base).json() == {"limits": None}
        set_ = plain.put(base, content=json.dumps({"app_writes": 2, "window": 5}))
        assert set_.status_code == 200
        expected: dict[str, Any] = {
            "app_requests": 1000,
            "app_writes": 2,
            "tenant_requests": 2000,
            "tenant_writes": 200,
            "window": 5.0,
            "retry_after": None,
            "send_retry_after": True,
        }
        assert set_.json() == {"limits": expected}
        assert sim.limits == GraphLimits(app_writes=2, window=5.0)
        assert plain.get(f"{sim.url}/_simulator/info").json()["limits"] == expected
        bad = plain.put(base, content=json.dumps({"app_writes": 0}))
        assert bad.status_code == 400
        assert bad.json() == {"error": "graph limits app_writes: must be an integer >= 1, got 0"}
        unknown = plain.put(base, content=json.dumps({"writes": 3}))
        assert unknown.json() == {"error": "graph limits: unknown field 'writes'"}
        assert sim.limits == GraphLimits(app_writes=2, window=5.0)
        assert plain.delete(base).json() == {"limits": None}
        assert sim.limits is None


def test_real_clock_counts_arrivals_as_logged() -> None:
    """Without an injected clock the windows use arrival times, the log's ``monotonic``:
    several threads at once never get more than the limit into any window of the log.

    The threads hammer for at least 1.2 s and until the log shows both limits reached and
    a refusal among the requests of a busy window (a loaded machine may need longer), then
    the log is read for any window over the limit."""
    with Simulator.generate(
        seed=5, cas=1, certificates=10, page_size=10, anchor=ANCHOR,
        limits=GraphLimits(6, 2, 100, 100, window=0.5),
    ) as sim:  # fmt: skip
        token = fetch_token(sim, sim.tenants[0])
        reached = threading.Event()

        def hammer(method: str) -> None:
            with client(sim, token) as http:
                while not reached.is_set():
                    if method == "POST":
                        http.post(action(sim))
                    else:
                        http.get(f"{sim.url}{PREFIX}")

        def limits_reached() -> bool:
            return (
                sim.busiest_window(0.5, include_throttled=False) >= 6
                and sim.busiest_window(0.5, writes=True, include_throttled=False) >= 2
                and sim.busiest_window(0.5) > 6
            )

        threads = [threading.Thread(target=hammer, args=(m,)) for m in ("GET", "GET", "POST")]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        try:
            while time.monotonic() < start + 30 and (
                time.monotonic() < start + 1.2 or not limits_reached()
            ):
                time.sleep(0.05)
        finally:
            reached.set()
            for thread in threads:
                thread.join()
        assert limits_reached(), "the limits were not reached in 30 s"
        admitted = [e for e in sim.log if e.endpoint in ("ca_list", "leaves") and e.status == 200]
        refused = [e for e in sim.log if e.status == 429]
        assert refused and admitted
        assert all(e.fault == "graph_limit" for e in refused)
        assert max_in_window([e.monotonic for e in admitted], 0.5) == 6
        writes = [e.monotonic for e in admitted if e.method == "POST"]
        assert max_in_window(writes, 0.5) == 2
        assert sim.busiest_window(0.5, include_throttled=False) == 6
        assert sim.busiest_window(0.5, writes=True, include_throttled=False) == 2
        tenant = sim.tenants[0]
        assert (
            sim.busiest_window(
                0.5,
                tenant_id=tenant.tenant_id.upper(),
                app_id=tenant.client_id,
                include_throttled=False,
            )
            == 6
        )
        assert sim.busiest_window(0.5) > 6  # the 429s arrived too
        assert sim.busiest_window(0.5, tenant_id="another") == 0


def test_max_in_window() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1  # half-open: (t - 1, t]
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.2], 1.0) == 4
    assert max_in_window([3.0, 0.1, 0.2], 20.0) == 3


def test_limiter_unit() -> None:
    clock = ManualClock(1000.0)
    limiter = Limiter(GraphLimits(3, 1, 4, 2, window=10.0), clock)
    assert limiter.admit("T", "a", "POST") is None
    refused = limiter.admit("t", "A", "PATCH")
    assert refused is not None
    assert (refused.scope, refused.kind, refused.limit, refused.retry_after_seconds) == (
        "app",
        "writes",
        1,
        10,
    )
    assert limiter.admit("t", "b", "DELETE") is None
    tenant = limiter.admit("t", "c", "PUT")
    assert tenant is not None and (tenant.scope, tenant.kind) == ("tenant", "writes")
    assert limiter.admit("t", "a", "GET") is None
    assert limiter.admit("t", "a", "GET") is None
    reads = limiter.admit("t", "a", "GET")
    assert reads is not None and (reads.scope, reads.kind) == ("app", "requests")
    clock.now += 9.5
    assert limiter.admit("t", "a", "GET") is not None
    assert limiter.admit("t", "a", "GET") is not None
    clock.now += 0.5
    assert limiter.admit("t", "a", "GET") is None  # all three left the window at once
    assert Limiter(None).admit("t", "a", "POST") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", GraphLimits()),
        ("10/2", GraphLimits(10, 2, 20, 4, 20.0)),
        ("10/2/5", GraphLimits(10, 2, 20, 4, 5.0)),
        ("10/2/5/15/3", GraphLimits(10, 2, 15, 3, 5.0)),
    ],
)
def test_cli_syntax(text: str, expected: GraphLimits) -> None:
    assert GraphLimits.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "graph limits '10': expected 'default' or APP_REQUESTS/APP_WRITES"),
        ("a/b", "graph limits 'a/b': numbers expected"),
        ("0/1", "graph limits app_requests: must be an integer >= 1, got 0"),
        ("1/1/0", "graph limits window: must be > 0 seconds, got 0.0"),
    ],
)
def test_cli_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        GraphLimits.parse(text)
