"""The dashboard and the alerts against a real Prometheus and Alertmanager.

One stack per module: the simulated tenant (in this process), pki-exporter (a subprocess,
refreshing every second), Prometheus (scraping it every second, evaluating
prometheus/alerts.yml with every `for:` shortened to 1s) and Alertmanager (routing every
alert to a webhook served by this test). The tests run in order: the last one kills the
exporter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from tests.exporter_proc import base_env, tenant_config, write_config
from tests.promstack import (
    BUILTIN_INTERVALS,
    AlertingStack,
    alerting_stack,
    grafana_regex_escape,
    load_dashboard,
    panel_queries,
    parse_label_values,
    require_binary,
    substitute,
    variable_query,
    wait_until,
    wait_until_every_query_has_data,
)

JOB = "pki-exporter"
TENANT = "contoso"
HEALTHY_CA = "Contoso Issuing CA (EU)"  # regex metacharacters on purpose
BROKEN_CA = "Contoso Devices CA"
DASHBOARD_URL = "https://grafana.example.com/d/intune-cloudpki/intune-cloud-pki"
# Fixed ids: the simulator derives each CA's records from the seed and the ids.
TENANT_ID = "5d7b3c1e-8f2a-4b6c-9d0e-1f2a3b4c5d6e"
CLIENT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
HEALTHY_CA_ID = "2b3a5c1e-7d4f-4e8a-9b6c-0d1e2f3a4b5c"
BROKEN_CA_ID = "8e9f0a1b-2c3d-4e5f-8a7b-6c5d4e3f2a1b"

pytestmark = pytest.mark.timeout(240)


def _dataset() -> Any:
    from pki_simulator import CASpec, DatasetSpec, TenantSpec

    common: dict[str, Any] = {"quirk_share": 0.0, "page_size": 500}
    return DatasetSpec(
        seed=4,
        anchor=datetime.now(UTC).replace(microsecond=0),
        tenants=(
            TenantSpec(
                tenant_id=TENANT_ID,
                client_id=CLIENT_ID,
                name=TENANT,
                cas=(
                    # Renewal works: active certificates end evenly over a year, about 2 %
                    # of them within 7 days, and so many that one was issued lately.
                    CASpec(id=HEALTHY_CA_ID, display_name=HEALTHY_CA, certificates=2000, **common),
                    # Renewal broken: half of the active certificates end within 7 days, on
                    # devices that have no newer one.
                    CASpec(
                        id=BROKEN_CA_ID,
                        display_name=BROKEN_CA,
                        certificates=200,
                        broken_renewal_share=0.5,
                        **common,
                    ),
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertingStack]:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    from pki_simulator import Simulator

    workdir = tmp_path_factory.mktemp("promstack")
    print(f"prometheus/alertmanager/exporter logs in {workdir}")
    sim = Simulator.from_spec(_dataset()).start()
    try:
        (tenant,) = sim.tenants
        config = write_config(
            workdir / "pki-exporter.yml",
            [tenant_config(sim, tenant, TENANT)],
            crl={"allowed_hosts": ["127.0.0.1"]},  # the simulator's CDN: the Revocation row
        )
        env = base_env(SECRET_CONTOSO=tenant.client_secret)
        with alerting_stack(workdir, config, env, JOB) as (
            exporter,
            prometheus,
            alertmanager,
            webhook,
        ):
            yield AlertingStack(workdir, sim, exporter, prometheus, alertmanager, webhook)
    finally:
        sim.close()


def _values(stack: AlertingStack, concrete: bool) -> dict[str, str]:
    if concrete:
        chosen = {
            "job": JOB,
            "instance": stack.instance,
            "tenant": TENANT,
            "ca": HEALTHY_CA,
        }
        selected = {name: grafana_regex_escape(value) for name, value in chosen.items()}
    else:
        selected = dict.fromkeys(("job", "instance", "tenant", "ca"), ".+")  # "All"
    return dict(BUILTIN_INTERVALS) | selected


def _truth(stack: AlertingStack) -> dict[tuple[str, str, str], float]:
    """The simulator's ground truth, now: (metric, CA, status or window) -> value."""
    (tenant,) = stack.sim.tenants
    samples = stack.sim.expected_samples(
        now=datetime.now(UTC), windows=(7, 30, 90), tenant_names={tenant.tenant_id: TENANT}
    )
    truth: dict[tuple[str, str, str], float] = {}
    for (name, label_items), value in samples.items():
        labels = dict(label_items)
        key = (name, labels["ca"], labels.get("status") or labels.get("within_days", ""))
        truth[key] = truth.get(key, 0.0) + value
    return truth


def test_dashboard_variables_list_what_prometheus_scraped(stack: AlertingStack) -> None:
    dashboard = load_dashboard()
    expected = {
        "job": [JOB],
        "instance": [stack.instance],
        "tenant": [TENANT],
        "ca": sorted([HEALTHY_CA, BROKEN_CA]),
    }
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert [v["name"] for v in variables] == list(expected)
    for variable in variables:
        selector, label = parse_label_values(variable_query(variable))
        match = substitute(selector, _values(stack, concrete=False))
        want = expected[variable["name"]]
        # Until Prometheus has scraped a refresh of every CA, a variable lists fewer.
        values = wait_until(
            lambda m=match, lbl=label, w=want: (
                found if sorted(found := stack.prometheus.label_values(lbl, m)) == w else None
            ),
            timeout=30,
            what=f"values {want} of variable {variable['name']} ({match})",
            diagnostics=stack.diagnostics,
        )
        assert sorted(values) == want


@pytest.mark.parametrize("concrete", [False, True], ids=["all", "one-ca"])
def test_every_dashboard_query_returns_data(stack: AlertingStack, concrete: bool) -> None:
    """A panel that shows nothing is a bug: every query, with "All" and with one CA."""
    queries = [
        (f"{title} [{ref}]", substitute(expr, _values(stack, concrete)))
        for title, ref, expr in panel_queries(load_dashboard())
    ]
    wait_until_every_query_has_data(stack, queries, "data for every dashboard query")


def test_dashboard_filters_do_filter(stack: AlertingStack) -> None:
    """The same stat over "All" and over one CA: the CA filter reaches the query."""
    (expr,) = [e for title, _, e in panel_queries(load_dashboard()) if title == "CAs monitored"]
    for concrete, expected in ((False, "2"), (True, "1")):
        (sample,) = stack.prometheus.query(substitute(expr, _values(stack, concrete)))
        assert sample["value"][1] == expected


def test_renewal_failing_reaches_the_webhook(stack: AlertingStack) -> None:
    alerts = wait_until(
        lambda: stack.webhook.find("IntuneCloudPKIRenewalFailing"),
        timeout=90,
        what="IntuneCloudPKIRenewalFailing at the webhook",
        diagnostics=stack.diagnostics,
    )
    (alert,) = alerts
    assert alert["labels"] == {
        "alertname": "IntuneCloudPKIRenewalFailing",
        "severity": "critical",
        "job": JOB,
        "instance": stack.instance,
        "tenant": TENANT,
        "ca_id": BROKEN_CA_ID,
        "ca": BROKEN_CA,
    }
    assert alert["annotations"]["summary"] == (
        "Certificate renewal is failing for an Intune Cloud PKI CA."
    )
    truth = _truth(stack)
    not_renewed = truth[("intune_cloudpki_devices_expiring", BROKEN_CA, "7")]
    due = truth[("intune_cloudpki_devices_renewal_due", BROKEN_CA, "7")]
    assert not_renewed / due > 0.8, "the data set must break renewal for this test to mean much"
    healthy = truth[("intune_cloudpki_devices_expiring", HEALTHY_CA, "7")]
    healthy_due = truth[("intune_cloudpki_devices_renewal_due", HEALTHY_CA, "7")]
    assert healthy_due > 0 and healthy / healthy_due < 0.5, "the healthy CA must renew"
    # Prometheus humanizes the share with %.4g. A device may leave the 7-day window between
    # the exporter's refresh and this reading of the truth: allow one either way.
    assert alert["annotations"]["description"] in {
        f"{100 * (not_renewed + a) / (due + b):.4g}% of the devices of CA {BROKEN_CA} (tenant"
        f" {TENANT}) whose certificate ends within 7 days have no newer certificate: they did"
        " not renew, and lose Wi-Fi/VPN access when it expires. The drill-down lists them."
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
    }
    assert alert["annotations"]["dashboard_url"] == (
        f"{DASHBOARD_URL}?var-tenant={TENANT}&var-ca={quote_plus(BROKEN_CA)}"
    )
    # From the page to the devices: the link leads to the exporter's list of them, which is
    # the simulator's ground truth at the time of the refresh it shows.
    drilldown = alert["annotations"]["drilldown_url"]
    assert drilldown == (
        f"{stack.exporter.url}/certificates?ca={BROKEN_CA_ID}&tenant={TENANT}&within_days=7"
    )
    page = httpx.get(drilldown + "&format=json", timeout=30).json()
    rows = stack.sim.expected_devices_at_risk(page["read_at_timestamp"], BROKEN_CA_ID, 7)
    assert len(rows) >= not_renewed - 1
    # --web.drilldown=devices (the default): the devices, without the people's names.
    assert page["rows"] == [{**row, "device_name": None, "user": None} for row in rows]
    # Nothing else fires, pending or not: not about the healthy CA, not about the exporter.
    # Only IntuneCloudPKIIssuanceStalled may join in, for the broken CA, when the data set
    # has it issue nothing for days (its devices stopped renewing): then it is right to.
    expected = {("IntuneCloudPKIRenewalFailing", BROKEN_CA, "firing")}
    for ca in (HEALTHY_CA, BROKEN_CA):
        latest = truth[
            ("intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds", ca, "")
        ]
        if time.time() - latest > 3 * 86400:
            expected.add(("IntuneCloudPKIIssuanceStalled", ca, "firing"))
    assert ("IntuneCloudPKIIssuanceStalled", HEALTHY_CA, "firing") not in expected, (
        "the healthy CA of the data set must have issued a certificate lately"
    )
    seen = wait_until(
        lambda: (
            {
                (a["labels"]["alertname"], a["labels"].get("ca"), a["state"])
                for a in stack.prometheus.alerts()
            }
            == expected
            or None
        ),
        timeout=30,
        what=f"exactly these alerts in Prometheus: {sorted(expected)}",
        diagnostics=lambda: (
            f"Prometheus alerts: {stack.prometheus.alerts()}\n{stack.diagnostics()}"
        ),
    )
    assert seen


def test_killing_the_exporter_raises_exporter_down(stack: AlertingStack) -> None:
    assert stack.exporter.proc is not None
    stack.exporter.proc.kill()
    stack.exporter.proc.wait(timeout=10)
    alerts = wait_until(
        lambda: stack.webhook.find("IntuneCloudPKIExporterDown"),
        timeout=90,
        what="IntuneCloudPKIExporterDown at the webhook",
        diagnostics=stack.diagnostics,
    )
    (alert,) = alerts
    assert alert["labels"] == {
        "alertname": "IntuneCloudPKIExporterDown",
        "severity": "warning",
        "job": JOB,
        "instance": stack.instance,
    }
    assert alert["annotations"]["description"] == (
        f"{stack.instance} (job {JOB}) has been unreachable for 15 minutes; certificate"
        " alerts for its tenants are blind meanwhile."
    )
    # Its series went stale with the failed scrape: the renewal alert resolves.
    wait_until(
        lambda: stack.webhook.find("IntuneCloudPKIRenewalFailing", status="resolved"),
        timeout=60,
        what="IntuneCloudPKIRenewalFailing resolved at the webhook",
        diagnostics=stack.diagnostics,
    )
