"""The revocation alerts and the dashboard's Revocation row against a real Prometheus and
Alertmanager, driven by the simulator's CRL faults (issue 19, "Alerts").

One stack per module, as in test_prometheus_e2e.py: the simulated tenant (in this process)
with nine CAs, pki-exporter (a subprocess, reading every CRL each second), Prometheus
(scraping it every second, evaluating prometheus/alerts.yml with every `for:` shortened to
1s) and Alertmanager (routing every alert to a webhook served by this test).

The first test sees every CRL read and healthy and proves that nothing of the revocation
group fires. Then one CRL fault per CA is switched on through the simulator's control API
(the exporter has read each CRL once, so a failed read keeps its last good values, as in a
real outage), and each test follows one alert to the webhook, its labels and annotations
exact against the simulator's ground truth. Time is not faked: the alert windows are days,
so the faults place nextUpdate where each alert wants it (`crl_stale`'s `next_update_in`);
only `for:` is shortened.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    require_binary,
    substitute,
    wait_until,
    wait_until_every_query_has_data,
)

JOB = "pki-exporter"
TENANT = "contoso"
TENANT_ID = "3f6c1d2e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"
CLIENT_ID = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
DASHBOARD_URL = "https://grafana.example.com/d/intune-cloudpki/intune-cloud-pki"
GRACE = 4 * 3600  # crl.publication_grace, as configured below
DAY = 86400
REVOCATION_ALERTS = (
    "IntuneCloudPKICRLPublicationLate",
    "IntuneCloudPKICRLLapsing",
    "IntuneCloudPKICRLLapsed",
    "IntuneCloudPKICRLUnreadable",
    "IntuneCloudPKICRLSignatureInvalid",
    "IntuneCloudPKIRevocationsUnpublished",
)
MISSING = 3  # revocations left out of the crl_missing CA's CRL


@dataclass(frozen=True)
class Case:
    """One CA of the data set and the CRL faults switched on for it (none: stays healthy)."""

    ca_id: str
    name: str
    faults: tuple[dict[str, Any], ...] = ()


HEALTHY = Case("0d3e5f7a-9b1c-4d2e-8f3a-5b7c9d1e2f3a", "Contoso Issuing CA (EU)")
UNPUBLISHED = Case(
    "1e4f6a8b-0c2d-4e3f-9a4b-6c8d0e2f3a4b",
    "Contoso Devices CA",
    ({"kind": "crl_missing", "count": MISSING},),
)
LAPSED = Case(
    "2f5a7b9c-1d3e-4f4a-8b5c-7d9e1f3a4b5c",
    "Contoso Lapsed CA",
    ({"kind": "crl_stale", "next_update_in": -3600},),
)
LAPSING = Case(
    "3a6b8c0d-2e4f-4a5b-9c6d-8e0f2a4b5c6d",
    "Contoso Lapsing CA",
    ({"kind": "crl_stale", "next_update_in": 12 * 3600},),
)
LATE = Case(
    "4b7c9d1e-3f5a-4b6c-8d7e-9f1a3b5c6d7e",
    "Contoso Late CA",
    ({"kind": "crl_stale", "next_update_in": 2 * DAY},),
)
FOREIGN_KEY = Case(
    "5c8d0e2f-4a6b-4c7d-9e8f-0a2b4c6d7e8f",
    "Contoso Forged CA",
    ({"kind": "crl_foreign_key"},),
)
FOREIGN_ISSUER = Case(
    "8f1a3b5c-7d9e-4f0a-8b1c-3d5e7f9a0b1c",
    "Contoso Elsewhere CA",
    ({"kind": "crl_foreign_issuer"},),
)
HTTP_ERROR = Case(
    "6d9e1f3a-5b7c-4d8e-8f9a-1b3c5d7e8f9a",
    "Contoso VPN CA (EU)",  # regex metacharacters, for the dashboard's one-CA queries
    ({"kind": "crl_error", "status": 503},),
)
RESET = Case(
    "7e0f2a4b-6c8d-4e9f-9a0b-2c4d6e8f9a0b",
    "Contoso Reset CA",
    # The simulator resets only a 200 (a 304 has no body to cut): the CA publishes a new
    # CRL (here the same in PEM, a new ETag) and every download of it is reset. The reset
    # goes in first: a read between the two faults would take the PEM whole, and every
    # later read would be a 304 (a loaded clean-clone run saw no alert so).
    ({"kind": "crl_reset"}, {"kind": "crl_pem"}),
)
CASES = (
    HEALTHY,
    UNPUBLISHED,
    LAPSED,
    LAPSING,
    LATE,
    FOREIGN_KEY,
    FOREIGN_ISSUER,
    HTTP_ERROR,
    RESET,
)

pytestmark = pytest.mark.timeout(300)


@dataclass
class Stack(AlertingStack):
    faults_at: float | None = None
    """When the faults began to be switched on (time.time()); None while every CRL is
    healthy."""
    faults_done: float | None = None
    """When the last fault was switched on."""
    urls: dict[str, str] = field(default_factory=dict)
    """CA id -> the URL of its CRL."""


def _dataset() -> Any:
    from pki_simulator import CASpec, DatasetSpec, TenantSpec

    return DatasetSpec(
        seed=19,
        anchor=datetime.now(UTC).replace(microsecond=0),
        tenants=(
            TenantSpec(
                tenant_id=TENANT_ID,
                client_id=CLIENT_ID,
                name=TENANT,
                cas=tuple(
                    CASpec(id=case.ca_id, display_name=case.name, certificates=300, page_size=500)
                    for case in CASES
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    from pki_simulator import Simulator

    workdir = tmp_path_factory.mktemp("promstack-crl")
    print(f"prometheus/alertmanager/exporter logs in {workdir}")
    sim = Simulator.from_spec(_dataset()).start()
    try:
        (tenant,) = sim.tenants
        config = write_config(
            workdir / "pki-exporter.yml",
            [tenant_config(sim, tenant, TENANT)],
            refresh={"interval": "5s", "timeout": "5s", "concurrency": 4},
            crl={
                "enabled": True,
                "interval": "1s",
                "timeout": "2s",
                "publication_grace": "4h",
                "allowed_hosts": ["127.0.0.1"],
            },
        )
        env = base_env(SECRET_CONTOSO=tenant.client_secret)
        with alerting_stack(workdir, config, env, JOB) as (
            exporter,
            prometheus,
            alertmanager,
            webhook,
        ):
            now = time.time()
            urls = {truth.ca_id: truth.url for truth in sim.expected_crls(now) if truth.named}
            assert sorted(urls) == sorted(case.ca_id for case in CASES), "one CRL per CA"
            yield Stack(workdir, sim, exporter, prometheus, alertmanager, webhook, urls=urls)
    finally:
        sim.close()


# ----------------------------------------------------------------------------- truth


def _truth_samples(
    stack: Stack, now: float
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return dict(stack.sim.expected_crl_samples(now, grace=GRACE, tenant_names={TENANT_ID: TENANT}))


def _prometheus_samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every CRL gauge Prometheus holds now, without job and instance (as the truth has it)."""
    samples = {}
    for sample in stack.prometheus.query(
        '{__name__=~"intune_cloudpki_(crl_.*|leaf_certificates_revoked_unpublished)",'
        '__name__!="intune_cloudpki_crl_fetch_failures_total"}'
    ):
        labels = dict(sample["metric"])
        name = labels.pop("__name__")
        assert (labels.pop("job"), labels.pop("instance")) == (JOB, stack.instance)
        samples[(name, tuple(sorted(labels.items())))] = float(sample["value"][1])
    return samples


def _crl(stack: Stack, case: Case, now: float) -> Any:
    """The simulator's truth about the CRL of `case`'s CA at `now`."""
    (truth,) = [t for t in stack.sim.expected_crls(now) if t.ca_id == case.ca_id and t.named]
    return truth


def _expected_alerts(stack: Stack, now: float) -> set[tuple[str, str, str | None]]:
    """(alert, CA id, CRL URL) of every revocation alert the truth at `now` calls for."""
    expected: set[tuple[str, str, str | None]] = set()
    for truth in stack.sim.expected_crls(now):
        if not truth.named:
            continue
        left = truth.kept.next_update - now
        if DAY <= left < 3 * DAY:
            expected.add(("IntuneCloudPKICRLPublicationLate", truth.ca_id, truth.url))
        elif 0 < left < DAY:
            expected.add(("IntuneCloudPKICRLLapsing", truth.ca_id, truth.url))
        elif left <= 0:
            expected.add(("IntuneCloudPKICRLLapsed", truth.ca_id, truth.url))
        if not truth.fetch_success:
            expected.add(("IntuneCloudPKICRLUnreadable", truth.ca_id, truth.url))
            if truth.reason == "signature":
                expected.add(("IntuneCloudPKICRLSignatureInvalid", truth.ca_id, truth.url))
    for case in CASES:
        if stack.sim.expected_unpublished(now, case.ca_id, grace=GRACE):
            expected.add(("IntuneCloudPKIRevocationsUnpublished", case.ca_id, None))
    return expected


def _revocation_alerts(stack: Stack, state: str) -> set[tuple[str, str, str | None]]:
    return {
        (a["labels"]["alertname"], a["labels"]["ca_id"], a["labels"].get("url"))
        for a in stack.prometheus.alerts()
        if a["labels"]["alertname"] in REVOCATION_ALERTS and a["state"] == state
    }


def humanize_duration(seconds: float) -> str:
    """Prometheus' `humanizeDuration` template function, for a minute or more."""
    assert abs(seconds) >= 60, seconds
    sign = "-" if seconds < 0 else ""
    whole = int(abs(seconds))
    days, hours = whole // DAY, whole // 3600 % 24
    minutes, secs = whole // 60 % 60, whole % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {secs}s"
    return f"{sign}{minutes}m {secs}s"


# ------------------------------------------------------------------------- the alerts


def _labels(stack: Stack, alertname: str, severity: str, case: Case, crl: bool) -> dict[str, str]:
    labels = {
        "alertname": alertname,
        "severity": severity,
        "job": JOB,
        "instance": stack.instance,
        "tenant": TENANT,
        "ca_id": case.ca_id,
        "ca": case.name,
    }
    if crl:
        labels["url"] = stack.urls[case.ca_id]
    return labels


def _dashboard_url(case: Case, stack: Stack | None = None) -> str:
    if stack is None:
        return f"{DASHBOARD_URL}?var-tenant={TENANT}&var-ca={quote_plus(case.name)}"
    return (
        f"{DASHBOARD_URL}?var-job={JOB}&var-instance={quote_plus(stack.instance)}"
        f"&var-tenant={TENANT}&var-ca={quote_plus(case.name)}"
    )


def _at_webhook(stack: Stack, alertname: str, case: Case) -> dict[str, Any]:
    """The one firing notification of `alertname` for `case`'s CA."""
    alerts = wait_until(
        lambda: [a for a in stack.webhook.find(alertname) if a["labels"]["ca_id"] == case.ca_id],
        timeout=90,
        what=f"{alertname} for {case.name} at the webhook",
        diagnostics=stack.diagnostics,
    )
    (alert,) = alerts
    return dict(alert)


def _in_prometheus(
    stack: Stack, alertname: str, case: Case, description: str | None = None
) -> dict[str, Any]:
    """The firing alert `alertname` of `case`'s CA as Prometheus' API shows it (once its
    description is `description`, when given: annotations are rendered at each evaluation)."""
    (alert,) = wait_until(
        lambda: [
            a
            for a in stack.prometheus.alerts()
            if a["labels"]["alertname"] == alertname
            and a["labels"]["ca_id"] == case.ca_id
            and a["state"] == "firing"
            and description in (None, a["annotations"]["description"])
        ],
        timeout=60,
        what=f"{alertname} for {case.name} firing in Prometheus",
        diagnostics=stack.diagnostics,
    )
    return dict(alert)


def _time_left_description(template: str, stack: Stack, case: Case, left: float) -> str:
    return template.format(
        url=stack.urls[case.ca_id], ca=case.name, tenant=TENANT, left=humanize_duration(left)
    )


LATE_TEXT = (
    "The CRL {url} of CA {ca} (tenant {tenant}) lapses in {left}: Cloud PKI republishes every"
    " 3.5 days, so a publication was missed. When it lapses, RADIUS and VPN refuse every"
    " certificate of the CA. Check the CA's state in Intune and open a Microsoft support case"
    " if it does not recover."
)
LAPSING_TEXT = (
    "The CRL {url} of CA {ca} (tenant {tenant}) lapses in {left}. After that, RADIUS servers"
    " and VPN gateways that check revocation refuse every certificate of the CA: the whole"
    " fleet loses Wi-Fi and VPN. Escalate to Microsoft support now; as a stopgap, a relying"
    " party may be set to tolerate an unavailable CRL."
)


def _check_time_left_alert(
    stack: Stack, alertname: str, severity: str, summary: str, text: str, case: Case
) -> None:
    """An alert whose description says how long the CRL has left: exact against the value
    Prometheus evaluated (its API gives both), and at the webhook within the evaluations
    that can have rendered it (between the faults and now)."""
    assert stack.faults_at is not None
    next_update = _crl(stack, case, time.time()).kept.next_update
    alert = _at_webhook(stack, alertname, case)
    received = time.time()
    assert alert["labels"] == _labels(stack, alertname, severity, case, crl=True)
    annotations = alert["annotations"]
    assert annotations["summary"] == summary
    assert annotations["dashboard_url"] == _dashboard_url(case)
    assert annotations["status_url"] == stack.external_url
    lefts = range(
        math.floor(next_update - received) - 1, math.ceil(next_update - stack.faults_at) + 2
    )
    assert annotations["description"] in {
        _time_left_description(text, stack, case, left) for left in lefts
    }
    shown = _in_prometheus(stack, alertname, case)
    value = float(shown["value"])
    assert next_update - received - 1 <= value <= next_update - stack.faults_at + 1
    assert shown["annotations"]["description"] == _time_left_description(text, stack, case, value)


# ---------------------------------------------------------------------------- the tests


def test_healthy_crls_are_read_and_nothing_fires(stack: Stack) -> None:
    """Every CRL read, every gauge exact against the truth, no revocation alert at all."""
    truth: dict[Any, float] = {}
    seen: dict[Any, float] = {}

    def prometheus_has_the_truth() -> bool:
        truth.clear()
        truth.update(_truth_samples(stack, time.time()))
        seen.clear()
        seen.update(_prometheus_samples(stack))
        return seen == truth

    wait_until(
        prometheus_has_the_truth,
        timeout=90,
        what="Prometheus holding every CRL gauge as the simulator's truth has it",
        diagnostics=lambda: f"truth: {truth}\nseen: {seen}\n{stack.diagnostics()}",
    )
    assert {v for (name, _), v in truth.items() if name.endswith("fetch_success")} == {1.0}
    assert {v for (name, _), v in truth.items() if name.endswith("_unpublished")} == {0.0}
    assert min(v for (name, _), v in truth.items() if "next_update" in name) > (
        time.time() + 3.5 * DAY
    ), "a healthy CRL has more than 3.5 days left"
    # The data is in Prometheus: two evaluations of the revocation group later (with
    # `for: 1s`, enough to go pending and then firing), nothing of it is pending or firing.
    data_at = time.time()
    wait_until(
        lambda: _group_evaluated_after(stack, "intune-cloudpki-revocation", data_at + 2),
        timeout=30,
        what="two evaluations of the revocation rules after the data arrived",
        diagnostics=stack.diagnostics,
    )
    assert [
        a for a in stack.prometheus.alerts() if a["labels"]["alertname"] in REVOCATION_ALERTS
    ] == []
    assert [
        a for a in stack.webhook.alerts() if a["labels"]["alertname"] in REVOCATION_ALERTS
    ] == []
    assert _expected_alerts(stack, time.time()) == set()


def _group_evaluated_after(stack: Stack, name: str, instant: float) -> bool:
    body = httpx.get(f"{stack.prometheus.url}/api/v1/rules", timeout=5.0).json()
    (group,) = [g for g in body["data"]["groups"] if g["name"] == name]
    return bool(datetime.fromisoformat(group["lastEvaluation"]).timestamp() > instant)


@pytest.fixture(scope="module")
def faulted(stack: Stack) -> Stack:
    """One CRL fault per CA but the healthy one, through the simulator's control API, once
    the exporter has read every CRL (so that a failed read has last good values to keep)."""
    success = "intune_cloudpki_crl_fetch_success"
    stack.exporter.wait_for(
        lambda samples: (
            sorted(
                dict(labels)["url"]
                for (name, labels), v in samples.items()
                if name == success and v == 1
            )
            == sorted(stack.urls.values())
        ),
        timeout=60,
        what="a good read of every CRL",
    )
    stack.faults_at = time.time()
    for case in CASES:
        for fault in case.faults:
            response = httpx.post(
                f"{stack.sim.url}/_simulator/faults",
                json={**fault, "ca_id": case.ca_id},
                verify=ssl.create_default_context(cafile=str(stack.sim.ca_bundle_path)),
                timeout=10,
            )
            assert response.status_code == 201, response.text
    stack.faults_done = time.time()
    return stack


def test_revocations_missing_from_the_crl_raise_unpublished(faulted: Stack) -> None:
    stack = faulted
    case = UNPUBLISHED
    alert = _at_webhook(stack, "IntuneCloudPKIRevocationsUnpublished", case)
    assert alert["labels"] == _labels(
        stack, "IntuneCloudPKIRevocationsUnpublished", "critical", case, crl=False
    )
    annotations = alert["annotations"]
    assert annotations["summary"] == (
        "Revoked Intune Cloud PKI certificates are missing from their CRL."
    )
    assert annotations["description"] == (
        f"{MISSING} certificates of CA {case.name} (tenant {TENANT}) were revoked in Intune but"
        " are not on the CRL they name: every RADIUS server and VPN gateway still accepts them"
        " (a revoked or stolen device still gets onto the network). The drill-down lists them;"
        " block them at the relying parties and escalate to Microsoft support."
    )
    assert annotations["dashboard_url"] == _dashboard_url(case)
    # From the page to the certificates: the link opens the exporter's list of them, which
    # is exactly the simulator's ground truth.
    drilldown = annotations["drilldown_url"]
    assert drilldown == (
        f"{stack.external_url}certificates?ca={case.ca_id}&tenant={TENANT}&view=unpublished"
    )
    page, expected = _unpublished_page(stack, case, drilldown)
    assert len(expected) == MISSING
    assert {row["crl_url"] for row in expected} == {stack.urls[case.ca_id]}
    assert (page["view"], page["tenant"], page["ca_id"], page["ca"]) == (
        "unpublished",
        TENANT,
        case.ca_id,
        case.name,
    )
    assert (page["unpublished"], page["checked"]) == (MISSING, True)
    # The HTML page a person opens from the alert lists the same serial numbers.
    html = httpx.get(drilldown, timeout=30)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    for row in page["rows"]:
        assert f"<code>{row['serial_number']}</code>" in html.text


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A drill-down row with its serial number as an integer (how the CRL compares it)."""
    return {**row, "serial_number": int(str(row["serial_number"]), 16)}


def _unpublished_page(
    stack: Stack, case: Case, drilldown: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The drill-down's JSON once its rows are the simulator's truth (serial numbers compared
    as integers), and the truth's rows (the exporter says ``revoked_at_timestamp`` where
    the simulator says ``revoked_timestamp``)."""
    page: dict[str, Any] = {}
    expected: list[dict[str, Any]] = []

    def page_is_the_truth() -> bool:
        page.clear()
        page.update(httpx.get(drilldown + "&format=json", timeout=30).json())
        expected[:] = [
            {
                **{k: v for k, v in row.items() if k != "revoked_timestamp"},
                "revoked_at_timestamp": row["revoked_timestamp"],
            }
            for row in stack.sim.expected_unpublished(time.time(), case.ca_id, grace=GRACE)
        ]
        return [_comparable(r) for r in page["rows"]] == [_comparable(r) for r in expected]

    wait_until(
        page_is_the_truth,
        timeout=30,
        what="the drill-down listing the simulator's unpublished revocations",
        diagnostics=lambda: f"page: {page}\nexpected: {expected}\n{stack.diagnostics()}",
    )
    return page, expected


def test_a_lapsed_crl_raises_lapsed(faulted: Stack) -> None:
    stack = faulted
    case = LAPSED
    alert = _at_webhook(stack, "IntuneCloudPKICRLLapsed", case)
    assert alert["labels"] == _labels(stack, "IntuneCloudPKICRLLapsed", "critical", case, True)
    annotations = alert["annotations"]
    assert annotations["summary"] == "An Intune Cloud PKI CRL has lapsed."
    assert annotations["description"] == (
        f"The CRL {stack.urls[case.ca_id]} of CA {case.name} (tenant {TENANT}) is past its"
        " nextUpdate: RADIUS servers and VPN gateways that check revocation refuse every"
        " certificate of the CA (NPS event 6273 reason 258, VPN error 853). Escalate to"
        " Microsoft support; until a new CRL is published, relying parties must be told to"
        " tolerate it or they reject the whole fleet."
    )
    assert annotations["dashboard_url"] == _dashboard_url(case)
    assert annotations["status_url"] == stack.external_url
    # Exactly the simulator's nextUpdate: an hour before the fault was switched on.
    truth = _crl(stack, case, time.time())
    assert truth.fetch_success == 1
    assert stack.faults_at is not None and stack.faults_done is not None
    assert (
        math.floor(stack.faults_at) - 3600
        <= truth.kept.next_update
        <= math.ceil(stack.faults_done) - 3600
    )
    (sample,) = stack.prometheus.query(
        f'intune_cloudpki_crl_next_update_timestamp_seconds{{ca_id="{case.ca_id}"}}'
    )
    assert float(sample["value"][1]) == truth.kept.next_update


def test_a_crl_lapsing_within_a_day_raises_lapsing(faulted: Stack) -> None:
    _check_time_left_alert(
        faulted,
        "IntuneCloudPKICRLLapsing",
        "critical",
        "An Intune Cloud PKI CRL lapses within a day.",
        LAPSING_TEXT,
        LAPSING,
    )


def test_a_crl_not_republished_raises_publication_late(faulted: Stack) -> None:
    _check_time_left_alert(
        faulted,
        "IntuneCloudPKICRLPublicationLate",
        "warning",
        "An Intune Cloud PKI CRL was not republished on schedule.",
        LATE_TEXT,
        LATE,
    )


@pytest.mark.parametrize("case", [FOREIGN_KEY, FOREIGN_ISSUER], ids=["key", "issuer"])
def test_a_crl_of_another_key_or_issuer_raises_signature_invalid(
    faulted: Stack, case: Case
) -> None:
    stack = faulted
    alert = _at_webhook(stack, "IntuneCloudPKICRLSignatureInvalid", case)
    assert alert["labels"] == _labels(
        stack, "IntuneCloudPKICRLSignatureInvalid", "critical", case, crl=True
    )
    annotations = alert["annotations"]
    assert annotations["summary"] == "An Intune Cloud PKI CRL does not verify against its CA."
    assert annotations["description"] == (
        f"The CRL {stack.urls[case.ca_id]} of CA {case.name} (tenant {TENANT}) is not signed"
        " by the CA's key or names another issuer. Relying parties reject such a CRL, and then"
        " the CA's certificates. If the CA was renewed, check that the URL belongs to the"
        " version that issued the certificates; otherwise the CDN serves a wrong or tampered"
        " file: escalate to Microsoft support."
    )
    assert annotations["dashboard_url"] == _dashboard_url(case)
    assert annotations["status_url"] == stack.external_url
    truth = _crl(stack, case, time.time())
    assert (truth.fetch_success, truth.reason) == (0, "signature")


@pytest.mark.parametrize(
    ("case", "reason"), [(HTTP_ERROR, "http_5xx"), (RESET, "network")], ids=["503", "reset"]
)
def test_an_unreachable_crl_raises_unreadable(faulted: Stack, case: Case, reason: str) -> None:
    stack = faulted
    alert = _at_webhook(stack, "IntuneCloudPKICRLUnreadable", case)
    assert alert["labels"] == _labels(stack, "IntuneCloudPKICRLUnreadable", "warning", case, True)
    annotations = alert["annotations"]
    assert annotations["summary"] == "pki-exporter cannot read an Intune Cloud PKI CRL."
    # The reason comes from a query of the failure counter at evaluation time: once the
    # exporter has counted one, every later notification names it.
    assert annotations["description"] in {
        f"Every read of the CRL {stack.urls[case.ca_id]} of CA {case.name} (tenant {TENANT})"
        f" by {stack.instance} has failed for an hour{mostly}. Its figures are those of the"
        " last good read. If relying parties cannot read it either, they may refuse the CA's"
        " certificates: check egress to the CDN (and crl.allowed_hosts for reason refused)."
        for mostly in ("", f", mostly with reason {reason}")
    }
    assert annotations["dashboard_url"] == _dashboard_url(case, stack)
    assert annotations["status_url"] == stack.external_url
    truth = _crl(stack, case, time.time())
    assert (truth.fetch_success, truth.reason) == (0, reason)
    # The first evaluations may precede the counter's second sample (no increase yet); a
    # later one names the reason, within the wait.
    named = (
        f"Every read of the CRL {stack.urls[case.ca_id]} of CA {case.name} (tenant {TENANT})"
        f" by {stack.instance} has failed for an hour, mostly with reason {reason}. Its"
        " figures are those of the last good read. If relying parties cannot read it either,"
        " they may refuse the CA's certificates: check egress to the CDN (and"
        " crl.allowed_hosts for reason refused)."
    )
    shown = _in_prometheus(stack, "IntuneCloudPKICRLUnreadable", case, description=named)
    assert shown["annotations"]["description"] == named


def test_exactly_the_alerts_the_truth_calls_for(faulted: Stack) -> None:
    """The healthy CA stays quiet, and each faulted one raises its alerts and no other:
    the set of firing revocation alerts equals the one the ground truth calls for (a stale
    CRL also leaves the revocations after its thisUpdate unpublished; an unverifiable CRL
    is also unreadable), and every CRL gauge is exact (failed reads keep the last good
    values)."""
    stack = faulted
    expected: set[tuple[str, str, str | None]] = set()
    seen: set[tuple[str, str, str | None]] = set()

    def firing_as_expected() -> bool:
        # The truth again at each try: a revocation may pass the grace meanwhile.
        expected.clear()
        expected.update(_expected_alerts(stack, time.time()))
        seen.clear()
        seen.update(_revocation_alerts(stack, "firing"))
        return seen == expected and not _revocation_alerts(stack, "pending")

    wait_until(
        firing_as_expected,
        timeout=90,
        what="exactly the revocation alerts the truth calls for, firing",
        diagnostics=lambda: (
            f"expected: {sorted(expected, key=str)}\nfiring: {sorted(seen, key=str)}\n"
            f"Prometheus alerts: {stack.prometheus.alerts()}\n{stack.diagnostics()}"
        ),
    )
    assert not {key for key in expected if key[1] == HEALTHY.ca_id}
    for case in CASES[1:]:
        assert {key for key in expected if key[1] == case.ca_id}, f"{case.name} raises nothing"
    at_webhook = {
        (a["labels"]["alertname"], a["labels"]["ca_id"], a["labels"].get("url"))
        for a in stack.webhook.alerts()
        if a["labels"]["alertname"] in REVOCATION_ALERTS
    }
    assert at_webhook <= expected
    truth: dict[Any, float] = {}
    samples: dict[Any, float] = {}

    def gauges_are_the_truth() -> bool:
        truth.clear()
        truth.update(_truth_samples(stack, time.time()))
        samples.clear()
        samples.update(_prometheus_samples(stack))
        return samples == truth

    wait_until(
        gauges_are_the_truth,
        timeout=30,
        what="every CRL gauge as the truth has it",
        diagnostics=lambda: f"truth: {truth}\nseen: {samples}\n{stack.diagnostics()}",
    )
    unpublished = {
        dict(labels)["ca_id"]: value
        for (name, labels), value in truth.items()
        if name == "intune_cloudpki_leaf_certificates_revoked_unpublished"
    }
    assert unpublished[UNPUBLISHED.ca_id] == MISSING
    assert unpublished[HEALTHY.ca_id] == 0


# ------------------------------------------------------------------------ dashboard


def _row_panels(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels of the row `title`: nested in it when collapsed, else those after it."""
    panels: list[dict[str, Any]] = []
    inside = False
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            if inside:
                break
            if panel.get("title") == title:
                inside = True
                panels.extend(panel.get("panels", []))
            continue
        if inside:
            panels.append(panel)
    return panels


@pytest.mark.parametrize("concrete", [False, True], ids=["all", "one-ca"])
def test_every_revocation_panel_query_returns_data(faulted: Stack, concrete: bool) -> None:
    """With "All" and with one CA (a CRL that fails to read: kept gauges and failures)."""
    stack = faulted
    panels = _row_panels(load_dashboard(), "Revocation")
    queries = [
        (f"{panel.get('title', '')} [{target.get('refId', '')}]", target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(panels) >= 5 and len(queries) >= len(panels), panels
    if concrete:
        chosen = {"job": JOB, "instance": stack.instance, "tenant": TENANT, "ca": HTTP_ERROR.name}
        selected = {name: grafana_regex_escape(value) for name, value in chosen.items()}
    else:
        selected = dict.fromkeys(("job", "instance", "tenant", "ca"), ".+")
    values = dict(BUILTIN_INTERVALS) | selected
    resolved = [(where, substitute(expr, values)) for where, expr in queries]
    wait_until_every_query_has_data(stack, resolved, "data for every query of the Revocation row")
    if concrete:
        # The CA filter reaches the queries: the table lists this CA's one CRL only.
        (table,) = [p for p in panels if p.get("title") == "CRLs"]
        for target in table["targets"]:
            result = stack.prometheus.query(substitute(target["expr"], values))
            assert [s["metric"].get("url") for s in result] == [stack.urls[HTTP_ERROR.ca_id]]
