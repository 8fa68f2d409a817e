"""Graph as tenants really have it (issue 11), end to end against the simulator over TLS:
the tenant's request budget holds, Graph's own limits are honoured, the navigation source
reads exactly what the action reads, and the token endpoint's outages are retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ANCHOR
from tests.exporter_proc import (
    Samples,
    certificate_samples,
    select,
    tenant_config,
    write_config,
)

pytestmark = pytest.mark.timeout(180)

WINDOW = 20.0
"""Graph's window, measured as Graph measures it: over the arrival times the simulator logs."""
GRAPH_ENDPOINTS = frozenset({"ca_list", "ca_get", "leaves", "leaves_nav", "leaves_count"})


def start(
    sim: Any,
    start_exporter: Any,
    tmp_path: Path,
    name: str = "contoso",
    *,
    refresh: dict[str, Any] | None = None,
    **tenant: Any,
) -> Any:
    config = write_config(
        tmp_path / f"config-{name}.yaml",
        [tenant_config(sim, sim.tenants[0], name, **tenant)],
        refresh=refresh or {"interval": "10m", "timeout": "30s", "concurrency": 4},
    )
    return start_exporter(
        "--config.file",
        str(config),
        env={f"SECRET_{name.upper()}": sim.tenants[0].client_secret},
    )


def truth(sim: Any, name: str = "contoso") -> Samples:
    return sim.expected_samples(
        now=ANCHOR, windows=(7, 30, 90), tenant_names={sim.tenants[0].tenant_id: name}
    )


def graph_entries(sim: Any) -> list[Any]:
    """The Graph requests the simulator received, in order of arrival."""
    return sorted((e for e in sim.log if e.endpoint in GRAPH_ENDPOINTS), key=lambda e: e.monotonic)


def failure_counts(samples: Samples) -> list[float]:
    return [
        v for (m, _labels), v in samples.items() if m == "intune_cloudpki_refresh_failures_total"
    ]


def drilldown(exporter: Any, ca_id: str, tenant: str) -> Any:
    response = exporter.get(
        f"/certificates?ca={ca_id}&tenant={tenant}&within_days=90&format=json",
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    page = response.json()
    return {key: page[key] for key in ("rows", "devices_at_risk", "complete")}


def test_navigation_reads_exactly_what_the_action_reads(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """One simulated tenant with every quirk, read both ways: every certificate and device
    figure, every invalid record and every drill-down row is the same, and the navigation
    source sends only GETs with $select and the largest page size."""
    sim = start_simulator(
        seed=111,
        cas=3,
        certificates=2400,
        page_size=500,
        quirk_share=0.05,
        broken_renewal_share=0.1,
    )
    action = start(sim, start_exporter, tmp_path, "action")
    action_samples = action.scrape()
    action_log = [e for e in graph_entries(sim) if e.endpoint == "leaves"]
    sim.clear_log()
    navigation = start(sim, start_exporter, tmp_path, "navigation", leaf_source="navigation")
    navigation_samples = navigation.scrape()
    navigation_log = [e for e in graph_entries(sim) if e.endpoint.startswith("leaves")]

    def renamed(samples: Samples, name: str) -> Samples:
        out: Samples = {}
        for (metric, labels), value in certificate_samples(select(samples)).items():
            out[(metric, tuple((k, "t" if k == "tenant" else v) for k, v in labels))] = value
        return out

    assert renamed(navigation_samples, "navigation") == renamed(action_samples, "action")
    assert certificate_samples(navigation_samples) == truth(sim, "navigation")
    assert any(v > 0 for k, v in navigation_samples.items() if k[0].endswith("_invalid"))
    for ca in sim.tenants[0].cas:
        assert drilldown(navigation, ca.id, "navigation") == drilldown(action, ca.id, "action")

    assert action_log and all(e.method == "POST" for e in action_log)
    assert navigation_log and {(e.method, e.endpoint) for e in navigation_log} == {
        ("GET", "leaves_nav")
    }
    first = [e for e in navigation_log if e.page == 0]
    assert len(first) == 3
    for entry in first:
        assert entry.query.startswith("$select=")
        assert entry.query.split("=", 1)[1].split(",") == [
            "validityStartDateTime",
            "validityEndDateTime",
            "certificateStatus",
            "devicePlatform",
            "deviceId",
            "deviceName",
            "userPrincipalName",
            "serialNumber",
            "thumbprint",
            # the CRL checks (issue 19)
            "crlDistributionPointUrl",
            "certificationAuthorityIssuerUri",
            "revocationDateTime",
        ]
    assert all("odata.maxpagesize=999" in (e.prefer or "") for e in navigation_log)
    assert all("include-unknown-enum-members" in (e.prefer or "") for e in navigation_log)


def test_a_small_budget_holds_with_four_cas_at_once(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """4 CAs of 2 pages each, refreshed at once, against a budget of 5 requests and 4 POSTs
    per 20 s: 9 requests need two windows. No full 20 s window of arrivals at Graph is over
    the budget, the wait is counted, and the numbers are exact."""
    sim = start_simulator(seed=112, cas=4, certificates=150, page_size=100)
    pages = [len(ca.page_sizes) for ca in sim.visible_cas()]
    assert pages == [2, 2, 2, 2]
    exporter = start(
        sim,
        start_exporter,
        tmp_path,
        graph_budget={"requests_per_20s": 5, "writes_per_20s": 4},
    )
    samples = exporter.scrape()
    assert certificate_samples(samples) == truth(sim)
    entries = graph_entries(sim)
    assert len(entries) == 9
    assert all(e.status == 200 for e in entries)
    assert sim.busiest_window(WINDOW) == 5
    assert sim.busiest_window(WINDOW, writes=True) == 4
    # The sixth request waited for the first to leave: a full window after its answer,
    # so it arrived more than 20 s after the first did.
    assert entries[5].monotonic - entries[0].monotonic >= WINDOW
    waited = samples[("intune_cloudpki_graph_budget_wait_seconds_total", (("tenant", "contoso"),))]
    assert waited >= WINDOW - 1.0


def test_the_budget_of_the_report_holds_by_arrival(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """The budget of issue 21's report, 300 requests and 30 POSTs per 20 s, with 40 leaf
    pages of 4 CAs answered after 50-300 ms each: in no full 20 s of arrivals does Graph
    see a 31st POST, and the numbers are exact."""
    sim = start_simulator(seed=117, cas=4, certificates=200, page_size=20, page_latency=(0.05, 0.3))
    assert [len(ca.page_sizes) for ca in sim.visible_cas()] == [10, 10, 10, 10]
    exporter = start(
        sim,
        start_exporter,
        tmp_path,
        graph_budget={"requests_per_20s": 300, "writes_per_20s": 30},
    )
    samples = exporter.scrape()
    assert certificate_samples(samples) == truth(sim)
    posts = [e for e in graph_entries(sim) if e.method == "POST"]
    assert len(posts) == 40
    assert sim.busiest_window(WINDOW, writes=True) == 30
    assert posts[30].monotonic - posts[0].monotonic >= WINDOW


def test_token_endpoint_outage_is_retried_not_counted(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """A 503 from Entra's token endpoint is retried (after MSAL's own 5 s throttle window)
    within the same refresh: no failure is counted, and the numbers are exact."""
    from pki_simulator import Fault

    sim = start_simulator(seed=113, cas=2, certificates=200)
    fault = sim.faults.add(Fault(kind="token_error", status=503, times=1))
    exporter = start(sim, start_exporter, tmp_path)
    samples = exporter.scrape()
    assert sim.faults.fired(fault) == 1
    assert certificate_samples(samples) == truth(sim)
    assert set(failure_counts(samples)) == {0.0}
    assert samples[("intune_cloudpki_tenant_up", (("tenant", "contoso"),))] == 1
    tokens = [e for e in sim.log if e.endpoint == "token"]
    assert [e.status for e in tokens] == [503, 200]
    assert tokens[1].time - tokens[0].time >= 5.0
    assert "retrying token request" in exporter.log()
    assert "reason=http_5xx" in exporter.log()


def test_the_default_budget_is_never_throttled_by_the_documented_limits(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """Graph's documented limits on, 4 CAs of 30 pages each refreshed at once (120 POSTs,
    more than the 100 per 20 s Graph allows one app): with the default budget no request
    is throttled, no full 20 s window of arrivals holds more than 900 requests or 90
    POSTs, and the numbers are exact."""
    from pki_simulator import GraphLimits

    sim = start_simulator(seed=114, cas=4, certificates=600, page_size=20)
    sim.set_limits(GraphLimits())
    exporter = start(sim, start_exporter, tmp_path)
    samples = exporter.scrape()
    assert certificate_samples(samples) == truth(sim)
    entries = graph_entries(sim)
    assert sum(1 for e in entries if e.method == "POST") == 120
    assert [e for e in entries if e.status == 429] == []
    assert sim.busiest_window(WINDOW, writes=True) == 90
    assert sim.busiest_window(WINDOW) <= 900
    assert (
        samples[("intune_cloudpki_graph_budget_wait_seconds_total", (("tenant", "contoso"),))] > 0
    )


def test_a_429_is_honoured_by_every_worker_and_the_refresh_recovers(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """Another app spends the tenant's limit: Graph allows this app only 6 POSTs per 4 s,
    far below the exporter's budget. Every 429's Retry-After is honoured by all the
    tenant's workers (no request of the tenant arrives inside it), the exporter slows down,
    and every CA ends exact, with no failure counted."""
    from pki_simulator import GraphLimits

    sim = start_simulator(seed=115, cas=4, certificates=120, page_size=20)
    sim.set_limits(
        GraphLimits(
            app_requests=50, app_writes=6, tenant_requests=100, tenant_writes=12, window=4.0
        )
    )
    exporter = start(
        sim,
        start_exporter,
        tmp_path,
        refresh={"interval": "10m", "timeout": "30s", "concurrency": 4},
    )
    samples = exporter.scrape()
    assert certificate_samples(samples) == truth(sim)
    assert set(failure_counts(samples)) == {0.0}
    entries = sorted(graph_entries(sim), key=lambda e: e.monotonic)
    throttled = [e for e in entries if e.status == 429]
    assert throttled, "the simulator's limit never answered 429"
    assert all(e.fault == "graph_limit" for e in throttled)
    assert samples[
        ("intune_cloudpki_graph_requests_total", (("code", "429"), ("tenant", "contoso")))
    ] == len(throttled)

    # Requests already on the wire when the 429 left may still arrive; nothing sent after
    # the exporter read it (allow 0.2 s from the moment the answer was ready, `answered`)
    # arrives before its Retry-After ran out (counted from the 429's arrival: Graph's own
    # clock starts there). Arrivals are the kernel's (`received`), not the simulator
    # thread's (`monotonic`), which a loaded machine delays by tenths of a second.
    pauses = 0
    for hit in throttled:
        assert hit.retry_after is not None
        retry_after = float(hit.retry_after)
        inside = [e for e in entries if hit.answered + 0.2 < e.sent < hit.sent + retry_after - 0.05]
        assert inside == [], (hit, retry_after, inside)
        pauses += 1
    assert pauses == len(throttled)
    # The exporter slowed down: fewer 429s than pages (each page was not throttled once).
    pages = sum(1 for e in entries if e.endpoint == "leaves" and e.status == 200)
    assert pages == 24
    assert len(throttled) < pages


def test_query_broker_500s_are_retried_per_page_on_every_ca(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """Intune's query broker answers the first two attempts of every leaf page with a 500
    and no Retry-After: every page is retried, every CA ends exact, nothing is counted."""
    from pki_simulator import Fault

    sim = start_simulator(seed=116, cas=4, certificates=100, page_size=50)
    fault = sim.faults.add(Fault(kind="query_broker", attempts=2))
    exporter = start(
        sim,
        start_exporter,
        tmp_path,
        refresh={"interval": "10m", "timeout": "10s", "concurrency": 4},
    )
    samples = exporter.scrape()
    assert certificate_samples(samples) == truth(sim)
    assert sim.faults.fired(fault) == 4 * 2 * 2  # 4 CAs x 2 pages x 2 attempts
    assert set(failure_counts(samples)) == {0.0}
    assert (
        samples[("intune_cloudpki_graph_requests_total", (("code", "500"), ("tenant", "contoso")))]
        == 16
    )
