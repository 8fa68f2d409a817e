"""The alerting rules pass promtool, follow the mixin conventions, and their tests bite.

`promtool test rules prometheus/alerts.test.yml` proves each alert fires and stays quiet
when it should. The mutants below prove those promtool cases are strict enough: each one
changes a rule the way a careless edit would (a threshold, a `for`, a filter, a label) and
the promtool cases must then fail.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promstack import REPO, RULES_PATH, RULES_TEST_PATH, require_binary

DOC_PATH = REPO / "docs" / "dashboards-and-alerts.md"
SEVERITIES = {"critical", "warning", "info"}
DASHBOARD_LINK = "https://grafana.example.com/d/intune-cloudpki/intune-cloud-pki"


def _rules() -> list[dict[str, Any]]:
    document = yaml.load(
        RULES_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    return [rule for group in document["groups"] for rule in group["rules"]]


ALERTS = {rule["alert"]: rule for rule in _rules()}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def _run(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULES_TEST_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_the_issue_asks_for_exist() -> None:
    assert set(ALERTS) == {
        "IntuneCloudPKIRenewalFailing",
        "IntuneCloudPKIIssuanceStalled",
        "IntuneCloudPKIRevocationSpike",
        "IntuneCloudPKIInvalidRecords",
        "IntuneCloudPKICACertificateExpiringSoon",
        "IntuneCloudPKICACertificateExpiringCritical",
        "IntuneCloudPKICANotActive",
        "IntuneCloudPKIRefreshFailing",
        "IntuneCloudPKIDataStale",
        "IntuneCloudPKITenantDown",
        "IntuneCloudPKIGraphThrottling",
        "IntuneCloudPKIConfigReloadFailed",
        "IntuneCloudPKIExporterDown",
        "IntuneCloudPKIExporterAbsent",
        # issue 19: revocation
        "IntuneCloudPKICRLPublicationLate",
        "IntuneCloudPKICRLLapsing",
        "IntuneCloudPKICRLLapsed",
        "IntuneCloudPKICRLUnreadable",
        "IntuneCloudPKICRLSignatureInvalid",
        "IntuneCloudPKIRevocationsUnpublished",
    }


# Alerts that link to the exporter's own pages as well as to the dashboard: the drill-down
# (the devices or certificates concerned) or the status page (each CA's CRL state).
DRILLDOWN_ALERTS = {"IntuneCloudPKIRenewalFailing", "IntuneCloudPKIRevocationsUnpublished"}
STATUS_ALERTS = {
    "IntuneCloudPKICRLPublicationLate",
    "IntuneCloudPKICRLLapsing",
    "IntuneCloudPKICRLLapsed",
    "IntuneCloudPKICRLUnreadable",
    "IntuneCloudPKICRLSignatureInvalid",
}


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_follows_the_mixin_conventions(name: str) -> None:
    rule = ALERTS[name]
    assert name.startswith("IntuneCloudPKI") and re.fullmatch(r"[A-Z][A-Za-z]+", name)
    assert rule["labels"]["severity"] in SEVERITIES
    # Some alerts also link to the exporter's drill-down or status page.
    extra = {"drilldown_url"} if name in DRILLDOWN_ALERTS else set()
    extra |= {"status_url"} if name in STATUS_ALERTS else set()
    assert set(rule["annotations"]) == {"summary", "description", "dashboard_url", *extra}
    assert rule["annotations"]["summary"].endswith(".")
    assert "$labels" in rule["annotations"]["description"] or name.endswith("Absent")
    assert rule["annotations"]["dashboard_url"].startswith(DASHBOARD_LINK)
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "every alert waits before firing"
    # The job selector lives only where `up` needs it; certificate rules work for any job.
    if "up{" not in rule["expr"]:
        assert "job=" not in rule["expr"]


def test_groups_are_named_for_the_mixin() -> None:
    groups = [g["name"] for g in yaml.safe_load(RULES_PATH.read_text())["groups"]]
    assert all(name.startswith("intune-cloudpki") for name in groups)
    assert len(groups) == len(set(groups))


@functools.cache
def _alert_cases() -> dict[str, list[list[Any]]]:
    """alertname -> the exp_alerts of each of its promtool cases (read once: a large file)."""
    cases: dict[str, list[list[Any]]] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for test in yaml.load(RULES_TEST_PATH.read_text(), Loader=loader)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_promtool_cases_prove_firing_and_quiet(name: str) -> None:
    cases = _alert_cases()
    assert set(cases) <= set(ALERTS), "a promtool case names an alert that does not exist"
    expected = cases.get(name, [])
    assert any(alerts for alerts in expected), f"no promtool case where {name} fires"
    assert any(not alerts for alerts in expected), f"no promtool case where {name} is quiet"
    for alerts in expected:
        for alert in alerts:
            assert alert["exp_labels"]["severity"] == ALERTS[name]["labels"]["severity"]
            assert set(alert["exp_annotations"]) == set(ALERTS[name]["annotations"])


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_documented(name: str) -> None:
    """In the threshold table at the top of alerts.yml and in the docs' table."""
    header = RULES_PATH.read_text().split("groups:")[0]
    assert re.search(rf"^#\s+{name}\s", header, re.M), f"{name} missing from the header"
    docs = DOC_PATH.read_text()
    row = re.search(rf"^\| `{name}` \|(.+)$", docs, re.M)
    assert row, f"{name} has no row in {DOC_PATH.name}'s alert table"
    assert f"| {ALERTS[name]['for']} |" in row[0]
    assert f"| {ALERTS[name]['labels']['severity']} |" in row[0]


# ------------------------------------------------------------------- mutation testing

# (alert, [(old, new), ...] applied to its expression, or {"for": ...}, what it breaks)
MUTANTS: dict[str, tuple[str, list[tuple[str, str]] | dict[str, str]]] = {
    "renewal share threshold raised": (
        "IntuneCloudPKIRenewalFailing",
        [(") > 0.50", ") > 0.60")],
    ),
    "renewal share of all devices": (
        "IntuneCloudPKIRenewalFailing",
        [
            (
                'intune_cloudpki_devices_renewal_due{within_days="7"}',
                "intune_cloudpki_devices",
            ),
        ],
    ),
    "renewal counts certificates, not devices": (
        "IntuneCloudPKIRenewalFailing",
        [
            (
                "sum without (within_days, platform) (intune_cloudpki_devices_expiring",
                "sum without (within_days) (intune_cloudpki_leaf_certificates_expiring",
            ),
        ],
    ),
    "drill-down link from any instance": (
        "IntuneCloudPKIRenewalFailing",
        [("job=%q, instance=%q}", "job=%q}"), ("$labels.job $labels.instance", "$labels.job")],
    ),
    "renewal minimum count lowered": (
        "IntuneCloudPKIRenewalFailing",
        [(">= 5", ">= 4")],
    ),
    "renewal over the 30-day window": (
        "IntuneCloudPKIRenewalFailing",
        [('within_days="7"', 'within_days="30"')],
    ),
    "renewal aggregation drops target labels": (
        "IntuneCloudPKIRenewalFailing",
        [
            ("without (within_days, platform)", "by (tenant, ca)"),
        ],
    ),
    "renewal waits less": ("IntuneCloudPKIRenewalFailing", {"for": "30m"}),
    "stalled ignores the CA status": (
        "IntuneCloudPKIIssuanceStalled",
        [('intune_cloudpki_ca_info{status="active"}', "intune_cloudpki_ca_info")],
    ),
    "stalled includes small CAs": ("IntuneCloudPKIIssuanceStalled", [(">= 10", ">= 9")]),
    "stalled after less than 3 days": (
        "IntuneCloudPKIIssuanceStalled",
        [("> 259200", "> 255600")],
    ),
    "revocation threshold raised": ("IntuneCloudPKIRevocationSpike", [(">= 20", ">= 21")]),
    "revocation counts other statuses": (
        "IntuneCloudPKIRevocationSpike",
        [('{status="revoked"}', '{status=~"revoked|active"}')],
    ),
    "CA warning window shortened": (
        "IntuneCloudPKICACertificateExpiringSoon",
        [("180 * 86400", "90 * 86400")],
    ),
    "CA critical window widened": (
        "IntuneCloudPKICACertificateExpiringCritical",
        [("30 * 86400", "101 * 86400")],
    ),
    "refresh reason from any instance": (
        "IntuneCloudPKIRefreshFailing",
        [("job=%q, instance=%q,", "job=%q,"), ("$labels.job $labels.instance", "$labels.job")],
    ),
    "refresh failing waits less": ("IntuneCloudPKIRefreshFailing", {"for": "5m"}),
    "stale after less than an hour": ("IntuneCloudPKIDataStale", [("> 3600", "> 3000")]),
    "tenant down waits less": ("IntuneCloudPKITenantDown", {"for": "5m"}),
    "throttling threshold lowered": ("IntuneCloudPKIGraphThrottling", [("> 0.10", "> 0.04")]),
    "exporter down for any job": (
        "IntuneCloudPKIExporterDown",
        [('up{job="pki-exporter"}', "up")],
    ),
    "absent for any job": (
        "IntuneCloudPKIExporterAbsent",
        [('absent(up{job="pki-exporter"})', 'absent(up{job="node"})')],
    ),
    "invalid records waits less": ("IntuneCloudPKIInvalidRecords", {"for": "15m"}),
    "CA not active waits less": ("IntuneCloudPKICANotActive", {"for": "15m"}),
    "config reload failed waits less": ("IntuneCloudPKIConfigReloadFailed", {"for": "5m"}),
    "config reload alert on success": (
        "IntuneCloudPKIConfigReloadFailed",
        [("_successful == 0", "_successful >= 0")],
    ),
    "CA critical summary says it expires for an expired CA": (
        "IntuneCloudPKICACertificateExpiringCritical",
        [("{{ else }}has expired{{ end }}.", "{{ else }}expires within 30 days{{ end }}.")],
    ),
    "CRL late window narrowed": (
        "IntuneCloudPKICRLPublicationLate",
        [(") < 3 * 86400", ") < 2 * 86400")],
    ),
    "CRL late overlaps lapsing": (
        "IntuneCloudPKICRLPublicationLate",
        [(") >= 86400", ") >= 0")],
    ),
    "CRL lapsing window narrowed": (
        "IntuneCloudPKICRLLapsing",
        [(") < 86400", ") < 43200")],
    ),
    "CRL lapsing overlaps lapsed": (
        "IntuneCloudPKICRLLapsing",
        [(") > 0", ") > -86400")],
    ),
    "CRL lapsed waits less": ("IntuneCloudPKICRLLapsed", {"for": "1m"}),
    "CRL lapsed a day late": (
        "IntuneCloudPKICRLLapsed",
        [("<= time()", "<= time() - 86400")],
    ),
    "CRL unreadable waits less": ("IntuneCloudPKICRLUnreadable", {"for": "30m"}),
    "CRL unreadable reason from any CRL": (
        "IntuneCloudPKICRLUnreadable",
        [(", url=%q}", "}"), (" $labels.ca_id $labels.url", " $labels.ca_id")],
    ),
    "CRL signature alert on any failure": (
        "IntuneCloudPKICRLSignatureInvalid",
        [('{reason="signature"}', "")],
    ),
    "CRL signature alert outlives the fix": (
        "IntuneCloudPKICRLSignatureInvalid",
        [("intune_cloudpki_crl_fetch_success == 0\nand ignoring (reason)\n", "")],
    ),
    "unpublished waits less": ("IntuneCloudPKIRevocationsUnpublished", {"for": "30m"}),
    "unpublished link to the wrong view": (
        "IntuneCloudPKIRevocationsUnpublished",
        [("&view=unpublished", "&within_days=7")],
    ),
}


def _mutated_rules(alert: str, change: list[tuple[str, str]] | dict[str, str]) -> str:
    """alerts.yml with one rule changed: fields replaced, or text replaced in its expr or
    description (wherever the old text is)."""
    document = yaml.safe_load(RULES_PATH.read_text())
    (rule,) = [r for g in document["groups"] for r in g["rules"] if r.get("alert") == alert]
    if isinstance(change, dict):
        rule.update(change)
        return yaml.safe_dump(document, sort_keys=False)
    annotations = rule["annotations"]
    for old, new in change:
        if old in rule["expr"]:
            rule["expr"] = rule["expr"].replace(old, new)
            continue
        for key, text in annotations.items():
            if old in text:
                annotations[key] = text.replace(old, new)
                break
        else:
            raise AssertionError(f"mutant out of date: {old!r} is not in {alert}")
    return yaml.safe_dump(document, sort_keys=False)


def _cases_for(alert: str) -> str:
    """The promtool test groups that assert on `alert`, in a file of their own (fast)."""
    document = yaml.safe_load(RULES_TEST_PATH.read_text())
    document["tests"] = [
        test
        for test in document["tests"]
        if any(case["alertname"] == alert for case in test.get("alert_rule_test", []))
    ]
    return yaml.safe_dump(document, sort_keys=False)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_promtool_cases_kill_the_mutant(promtool: str, tmp_path: Path, mutant: str) -> None:
    alert, change = MUTANTS[mutant]
    (tmp_path / "alerts.yml").write_text(_mutated_rules(alert, change))
    (tmp_path / "alerts.test.yml").write_text(_cases_for(alert))
    result = _run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"promtool cases did not notice '{mutant}':\n{output}"
    # Failed on an expectation about this very alert (not on a broken file).
    assert f"alertname: {alert}," in output, output
