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
# The exporter counts a window from the moment it sends, the simulator logs the moment a
# request arrives: a first request slowed by its TLS handshake may arrive this much late.
ARRIVAL_SLACK = 0.25
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
    return sorted((e for e in sim.log if e.endpoint in GRAPH_ENDPOINTS), key=lambda e: e.time)


def busiest_window(entries: list[Any], *, writes: bool) -> int:
    """The most requests (or POSTs) that arrived within any window of WINDOW - slack."""
    times = [e.time for e in entries if not writes or e.method == "POST"]
    best = 0
    for i, start_time in enumerate(times):
        inside = sum(1 for t in times[i:] if t < start_time + WINDOW - ARRIVAL_SLACK)
        best = max(best, inside)
    return best


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
        ]
    assert all("odata.maxpagesize=999" in (e.prefer or "") for e in navigation_log)
    assert all("include-unknown-enum-members" in (e.prefer or "") for e in navigation_log)


def test_a_small_budget_holds_with_four_cas_at_once(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """4 CAs of 2 pages each, refreshed at once, against a budget of 5 requests and 4 POSTs
    per 20 s: 9 requests need two windows. No window of what Graph received is over the
    budget, the wait is counted, and the numbers are exact."""
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
    assert busiest_window(entries, writes=False) <= 5
    assert busiest_window(entries, writes=True) <= 4
    # The last request had to wait for the first window to pass.
    assert entries[-1].time - entries[0].time >= WINDOW - ARRIVAL_SLACK
    waited = samples[("intune_cloudpki_graph_budget_wait_seconds_total", (("tenant", "contoso"),))]
    assert waited >= WINDOW - 1.0


def test_token_endpoint_outage_is_retried_not_counted(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """A 503 from Entra's token endpoint is retried (after MSAL's own 5 s throttle window)
    within the same refresh: no failure is counted, and the numbers are exact."""
    from pki_exporter.simulator import Fault

    sim = start_simulator(seed=113, cas=2, certificates=200)
    fault = sim.faults.add(Fault(kind="token_error", status=503, times=1))
    exporter = start(sim, start_exporter, tmp_path)
    samples = exporter.scrape()
    assert sim.faults.fired(fault) == 1
    assert certificate_samples(samples) == truth(sim)
    failures = {
        dict(labels)["reason"]: value
        for (metric, labels), value in samples.items()
        if metric == "intune_cloudpki_refresh_failures_total"
    }
    assert set(failures.values()) == {0.0}
    assert samples[("intune_cloudpki_tenant_up", (("tenant", "contoso"),))] == 1
    tokens = [e for e in sim.log if e.endpoint == "token"]
    assert [e.status for e in tokens] == [503, 200]
    assert tokens[1].time - tokens[0].time >= 5.0
    assert "retrying token request" in exporter.log()
    assert "reason=http_5xx" in exporter.log()
