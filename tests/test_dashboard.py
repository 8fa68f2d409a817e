"""The Grafana dashboard: generated from grafana/dashboard.py, and following our conventions.

grafana/pki-exporter.json is written by grafana/dashboard.py (grafana-foundation-sdk's typed
builders: panel types, option enums, variable kinds, the schema version come from the
types); a test regenerates it and fails on any difference. `lint_dashboard` keeps the
checks the types cannot make (grafana/dashboard-linter's rules and ours): every query
filtered by the variables, counters read with rate/increase over $__rate_interval, only
metrics the exporter defines, units Grafana knows, the datasource variable everywhere,
panels inside the grid. It returns every violation it finds; the dashboard must have none,
and each rule is proven able to fail on a copy of the dashboard broken on purpose. The e2e
test (test_prometheus_e2e.py) then runs every query against a real Prometheus.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promstack import (
    BUILTIN_INTERVALS,
    DASHBOARD_PATH,
    REPO,
    iter_panels,
    load_dashboard,
    parse_label_values,
    require_binary,
    substitute,
    variable_query,
)

UID = "intune-cloudpki"
DATASOURCE_REFS = {"${datasource}", "$datasource"}
QUERY_VARIABLES = {"job": "Job", "instance": "Instance", "tenant": "Tenant", "ca": "CA"}

# The metric table of ../shared/spec.md: name -> labels besides job and instance.
CERT_LABELS = frozenset({"tenant", "ca_id", "ca"})
METRICS: dict[str, frozenset[str]] = {
    "intune_cloudpki_leaf_certificates": CERT_LABELS | {"status", "platform"},
    "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds": CERT_LABELS,
    "intune_cloudpki_leaf_certificate_earliest_expiry_days": CERT_LABELS,
    "intune_cloudpki_leaf_certificates_expiring": CERT_LABELS | {"within_days"},
    "intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds": CERT_LABELS,
    "intune_cloudpki_ca_info": CERT_LABELS
    | {"status", "type", "key_size", "hashing_algorithm", "key_platform"},
    "intune_cloudpki_ca_certificate_expiry_timestamp_seconds": CERT_LABELS,
    "intune_cloudpki_refresh_success": CERT_LABELS,
    "intune_cloudpki_refresh_last_success_timestamp_seconds": CERT_LABELS,
    "intune_cloudpki_refresh_duration_seconds": CERT_LABELS,
    "intune_cloudpki_refresh_failures_total": CERT_LABELS | {"reason"},
    "intune_cloudpki_leaf_certificates_invalid": CERT_LABELS,
    "intune_cloudpki_graph_requests_total": frozenset({"tenant", "code"}),
    "intune_cloudpki_tenant_up": frozenset({"tenant"}),
    "intune_cloudpki_exporter_build_info": frozenset({"version"}),
    "intune_cloudpki_graph_budget_wait_seconds_total": frozenset({"tenant"}),
    "intune_cloudpki_config_last_reload_successful": frozenset(),
    "intune_cloudpki_config_last_reload_success_timestamp_seconds": frozenset(),
    # Issue 19: revocation (CRLs)
    "intune_cloudpki_crl_fetch_success": CERT_LABELS | {"url"},
    "intune_cloudpki_crl_fetch_failures_total": CERT_LABELS | {"url", "reason"},
    "intune_cloudpki_crl_last_update_timestamp_seconds": CERT_LABELS | {"url"},
    "intune_cloudpki_crl_next_update_timestamp_seconds": CERT_LABELS | {"url"},
    "intune_cloudpki_crl_revoked_certificates": CERT_LABELS | {"url"},
    "intune_cloudpki_crl_size_bytes": CERT_LABELS | {"url"},
    "intune_cloudpki_leaf_certificates_revoked_unpublished": CERT_LABELS,
}
# Issue 8: per-device renewal and where the exporter's pages are (README's metric table).
DEVICE_METRICS: dict[str, frozenset[str]] = {
    "intune_cloudpki_devices": CERT_LABELS | {"platform"},
    "intune_cloudpki_devices_expiring": CERT_LABELS | {"platform", "within_days"},
    "intune_cloudpki_devices_renewal_due": CERT_LABELS | {"platform", "within_days"},
    "intune_cloudpki_leaf_certificates_without_device": CERT_LABELS,
    "intune_cloudpki_exporter_web_info": frozenset({"external_url"}),
}
METRICS |= DEVICE_METRICS
# Issue 19: revocation (CRL), the spec's rows of 2026-12-06.
CRL_LABELS = CERT_LABELS | {"url"}
CRL_METRICS: dict[str, frozenset[str]] = {
    "intune_cloudpki_crl_fetch_success": CRL_LABELS,
    "intune_cloudpki_crl_fetch_failures_total": CRL_LABELS | {"reason"},
    "intune_cloudpki_crl_last_update_timestamp_seconds": CRL_LABELS,
    "intune_cloudpki_crl_next_update_timestamp_seconds": CRL_LABELS,
    "intune_cloudpki_crl_revoked_certificates": CRL_LABELS,
    "intune_cloudpki_crl_size_bytes": CRL_LABELS,
    "intune_cloudpki_leaf_certificates_revoked_unpublished": CERT_LABELS,
}
METRICS |= CRL_METRICS
SPEC_METRICS = dict(METRICS)
# Issue 12: warm restart (--storage.path), README's metric table only.
STORAGE_METRICS: dict[str, frozenset[str]] = {
    "intune_cloudpki_snapshot_restored": CERT_LABELS,
    "intune_cloudpki_storage_write_failures_total": frozenset(),
}
METRICS |= STORAGE_METRICS
# Series Prometheus itself attaches to every target.
SYNTHETIC_METRICS: dict[str, frozenset[str]] = {"up": frozenset()}

# Grafana unit ids the dashboard may use (grafana/dashboard-linter's list, the part we need).
VALID_UNITS = frozenset(
    {
        "none", "short", "percent", "bytes", "percentunit", "bool", "bool_yes_no",
        "s", "ms", "m", "h", "d", "dtdurations", "dtdurationms",
        "dateTimeAsIso", "dateTimeAsSystem", "dateTimeFromNow",
        "ops", "opm", "reqps", "rps", "cps", "cpm",
    }
)  # fmt: skip

PANEL_TYPES_WITH_QUERIES = {"stat", "table", "timeseries", "state-timeline", "bargauge", "gauge"}

# What a PKI administrator must find on the dashboard (issue 4).
REQUIRED_PANELS = {
    "Active certificates",
    "CAs monitored",
    "Earliest leaf expiry",
    "Expiring within 7 days",
    "Expiring within 30 days",
    "CA certificates expiring within a year",
    "CA refresh health",
    "Certification authorities",
    "Certificates by status",
    "Active certificates by platform",
    "Certificates expiring",
    "Time since the latest issuance",
    "Revocations",
    "Refresh success per CA",
    "Refresh duration per CA",
    "Refresh failures by reason",
    "Graph requests by status code",
    "Graph throttling",
    "Devices",
    "Devices that did not renew (7 days)",
    "Renewal failing share (7 days)",
    "Certificates without a device",
    "Devices that did not renew",
    "Devices at risk per CA",
    "Revocations missing from the CRL",
    "Shortest CRL time left",
    "CRLs",
    "CRL time left",
    "CRL read failures by reason",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w$])(?P<name>[a-zA-Z_:][\w:]*)\s*(?P<braces>\{[^}]*\})?")
_MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[(?P<range>[^\]]*)\]")
_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str], int, int]]:
    """(metric name, {label: "op value"}, start, end) of every vector selector in `expr`.

    A small PromQL reader: string literals and grouping clauses are blanked out first, so
    what remains that is an identifier not followed by "(" and not a keyword is a metric
    name, optionally followed by its matchers.
    """
    blank = _STRING.sub(lambda m: '"' + " " * (len(m[0]) - 2) + '"', expr)
    blank = _GROUPING.sub(lambda m: " " * len(m[0]), blank)
    blank = _RANGE.sub(lambda m: " " * len(m[0]), blank)
    for match in _SELECTOR.finditer(blank):
        name = match["name"]
        rest = blank[match.end() :].lstrip()
        if name.lower() in _PROMQL_WORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d[\w.]*", name):  # numbers and durations
            continue
        braces = expr[match.start("braces") : match.end("braces")] if match["braces"] else ""
        matchers = {m["label"]: f"{m['op']}{m['value']}" for m in _MATCHER.finditer(braces)}
        yield name, matchers, match.start(), match.end()


def _check_selectors(where: str, expr: str, required: dict[str, str]) -> list[str]:
    problems = []
    known = METRICS | SYNTHETIC_METRICS
    found = list(selectors(expr))
    if not found:
        problems.append(f"{where}: no metric selector in {expr!r}")
    for name, matchers, start, end in found:
        if name not in known:
            problems.append(f"{where}: unknown metric {name!r} (not in the spec's table)")
            continue
        labels = known[name] | {"job", "instance"}
        for label, value in required.items():
            if label in labels and matchers.get(label) != f"=~{value}":
                problems.append(f'{where}: {name} lacks the matcher {label}=~"{value}"')
        if name.endswith("_total"):
            before = expr[:start].rstrip()
            after = expr[end:].lstrip()
            if not re.search(r"\b(rate|increase)\($", before) or not after.startswith(
                "[$__rate_interval]"
            ):
                problems.append(
                    f"{where}: counter {name} must be read as "
                    f"rate/increase({name}{{...}}[$__rate_interval])"
                )
    for match in _RANGE.finditer(_STRING.sub('""', expr)):
        if match["range"] != "$__rate_interval" and ":" not in match["range"]:
            problems.append(f"{where}: range [{match['range']}] must be [$__rate_interval]")
    return problems


def _check_datasource(where: str, datasource: Any) -> list[str]:
    if not isinstance(datasource, dict) or datasource.get("uid") not in DATASOURCE_REFS:
        return [f"{where}: datasource must be {{'uid': '${{datasource}}'}}, is {datasource!r}"]
    if datasource.get("type") != "prometheus":
        return [f"{where}: datasource type must be prometheus, is {datasource.get('type')!r}"]
    return []


def _hardcoded_datasources(node: Any, path: str = "$") -> Iterator[str]:
    """Every datasource reference anywhere in the JSON that is not the variable."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and value is not None:
                uid = value.get("uid") if isinstance(value, dict) else value
                if uid not in DATASOURCE_REFS:
                    yield f"{path}.datasource = {value!r}"
            else:
                yield from _hardcoded_datasources(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _hardcoded_datasources(item, f"{path}[{index}]")


def _unit_problems(where: str, panel: dict[str, Any]) -> list[str]:
    field_config = panel.get("fieldConfig", {})
    unit = field_config.get("defaults", {}).get("unit")
    problems = []
    if not unit:
        problems.append(f"{where}: no unit (fieldConfig.defaults.unit)")
    elif unit not in VALID_UNITS:
        problems.append(f"{where}: unit {unit!r} is not a Grafana unit we allow")
    for override in field_config.get("overrides", []):
        for prop in override.get("properties", []):
            if prop.get("id") == "unit" and prop.get("value") not in VALID_UNITS:
                problems.append(f"{where}: override unit {prop.get('value')!r} is not valid")
    return problems


def _check_variables(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if ds is None:
        problems.append("no 'datasource' variable")
    else:
        # Its type is the builder's (DatasourceVariable); which data sources it lists is not.
        if ds.get("query") != "prometheus":
            problems.append("variable 'datasource' must list prometheus data sources")
        if ds.get("label") != "Data source":
            problems.append("variable 'datasource' must be labelled 'Data source'")
    chain: dict[str, str] = {}
    for name, label in QUERY_VARIABLES.items():
        variable = variables.get(name)
        if variable is None:
            problems.append(f"no {name!r} variable")
            continue
        where = f"variable {name!r}"
        if variable.get("label") != label:
            problems.append(f"{where}: must be labelled {label!r}")
        if not (variable.get("multi") and variable.get("includeAll")):
            problems.append(f"{where}: must be multi-value with 'All'")
        if variable.get("allValue") != ".+":
            problems.append(f"{where}: allValue must be '.+'")
        if variable.get("refresh") != 2:
            problems.append(f"{where}: must refresh on time range change (refresh: 2)")
        problems += _check_datasource(where, variable.get("datasource"))
        try:
            selector, values_of = parse_label_values(variable_query(variable))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if values_of != name:
            problems.append(f"{where}: lists the values of {values_of!r}, not {name!r}")
        # Chained: each variable is filtered by the ones before it.
        problems += _check_selectors(where, selector, chain)
        chain[name] = f"${name}"
    return problems


def lint_dashboard(dashboard: dict[str, Any]) -> list[str]:
    """Every convention the dashboard breaks, as readable sentences."""
    problems: list[str] = []
    if dashboard.get("uid") != UID:
        problems.append(f"uid must be {UID!r}, is {dashboard.get('uid')!r}")
    problems += _check_variables(dashboard)
    problems += [f"hard-coded {ref}" for ref in _hardcoded_datasources(dashboard)]

    all_matchers = {name: f"${name}" for name in QUERY_VARIABLES}
    seen_ids: set[int] = set()
    for panel in iter_panels(dashboard):
        where = f"panel {panel.get('title') or panel.get('id')!r}"
        if panel.get("id") in seen_ids:
            problems.append(f"{where}: duplicate id {panel.get('id')}")
        seen_ids.add(panel.get("id"))
        if not panel.get("title"):
            problems.append(f"{where}: no title")
        if panel.get("type") == "row":
            continue
        if not panel.get("description"):
            problems.append(f"{where}: no description")
        problems += _unit_problems(where, panel)
        problems += _check_datasource(where, panel.get("datasource"))
        targets = panel.get("targets", [])
        if panel.get("type") in PANEL_TYPES_WITH_QUERIES and not targets:
            problems.append(f"{where}: no query")
        for target in targets:
            twhere = f"{where} query {target.get('refId')}"
            problems += _check_datasource(twhere, target.get("datasource"))
            problems += _check_selectors(twhere, target.get("expr", ""), all_matchers)
    problems += _grid_problems(dashboard)
    return problems


def _grid_problems(dashboard: dict[str, Any]) -> list[str]:
    """Panels inside the 24-column grid, none on top of another."""
    problems = []
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard.get("panels", []):
        grid = panel.get("gridPos", {})
        x, y, w, h = (grid.get(k, 0) for k in ("x", "y", "w", "h"))
        title = panel.get("title", "")
        if w <= 0 or h <= 0 or x < 0 or x + w > 24:
            problems.append(f"panel {title!r}: gridPos {grid} is outside the grid")
            continue
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            if cell in taken:
                problems.append(f"panel {title!r} overlaps panel {taken[cell]!r}")
                break
            taken[cell] = title
    return problems


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_follows_the_conventions(dashboard: dict[str, Any]) -> None:
    assert lint_dashboard(dashboard) == []


def test_dashboard_has_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    titles = [p["title"] for p in iter_panels(dashboard) if p.get("type") != "row"]
    assert REQUIRED_PANELS - set(titles) == set()
    assert len(titles) == len(set(titles)), "panel titles must be unique"


def _dashboard_code() -> Any:
    spec = importlib.util.spec_from_file_location(
        "dashboard_code", REPO / "grafana" / "dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_json_is_generated_from_the_code() -> None:
    """grafana/pki-exporter.json is exactly what grafana/dashboard.py writes (`make dashboard`)."""
    code = _dashboard_code()
    assert code.OUTPUT == DASHBOARD_PATH
    wanted, committed = code.render(), DASHBOARD_PATH.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            "grafana/pki-exporter.json (committed)",
            "grafana/dashboard.py (generated)",
            n=2,
        )
    )
    assert not diff, "stale dashboard JSON: run `make dashboard`\n" + diff[:6000]
    assert code.main(["--check"]) == 0
    assert json.loads(wanted)["schemaVersion"] == code.SCHEMA_VERSION == 39  # Grafana 10 and 11


def test_dashboard_is_pretty_printed_json() -> None:
    """Diffs stay readable: two-space indentation, final newline, as the file is written."""
    text = DASHBOARD_PATH.read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_per_ca_table_names_every_column(dashboard: dict[str, Any]) -> None:
    (table,) = [p for p in iter_panels(dashboard) if p["title"] == "Certification authorities"]
    assert [t["refId"] for t in table["targets"]] == list("ABCDEFG")
    assert all(t.get("instant") and t.get("format") == "table" for t in table["targets"])
    assert [tr["id"] for tr in table["transformations"]] == ["merge", "organize"]
    organize = table["transformations"][1]["options"]
    columns = sorted(organize["indexByName"], key=organize["indexByName"].get)
    shown = [organize["renameByName"].get(c, c) for c in columns]
    assert shown == [
        "Tenant", "CA", "Status", "Type", "Active", "Revoked", "Expired",
        "Earliest leaf expiry", "CA certificate expiry", "Last successful refresh",
    ]  # fmt: skip
    assert organize["excludeByName"] == {"Time": True, "Value #A": True}


def test_earliest_expiry_thresholds_match_the_alerting_windows(dashboard: dict[str, Any]) -> None:
    (stat,) = [p for p in iter_panels(dashboard) if p["title"] == "Earliest leaf expiry"]
    steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["color"], s["value"]) for s in steps] == [
        ("red", None),
        ("orange", 7),
        ("yellow", 30),
        ("green", 90),
    ]
    assert stat["fieldConfig"]["defaults"]["unit"] == "d"


def test_metric_table_matches_the_spec() -> None:
    """The metric names this test knows are exactly those of the spec's table."""
    spec = REPO.parent / "shared" / "spec.md"
    if not spec.exists():
        pytest.skip(f"{spec} is not here (it is beside the checkout on CI)")
    in_table = set(re.findall(r"^\| `(intune_cloudpki_\w+)` \|", spec.read_text(), re.M))
    assert in_table == set(SPEC_METRICS)


def test_device_metrics_are_in_the_readme_table() -> None:
    """The issue-8 metrics the dashboard uses are documented in the README's metric table."""
    in_table = set(
        re.findall(r"^\| `(intune_cloudpki_\w+)` \|", (REPO / "README.md").read_text(), re.M)
    )
    assert set(DEVICE_METRICS) - in_table == set()


def test_storage_metrics_are_in_the_readme_table() -> None:
    """The --storage.path metrics are documented in the README's metric table."""
    in_table = set(
        re.findall(r"^\| `(intune_cloudpki_\w+)` \|", (REPO / "README.md").read_text(), re.M)
    )
    assert set(STORAGE_METRICS) - in_table == set()


def test_the_ca_table_links_to_the_drilldown(dashboard: dict[str, Any]) -> None:
    (table,) = [p for p in iter_panels(dashboard) if p["title"] == "Devices at risk per CA"]
    links = [
        link
        for override in table["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert [link["url"] for link in links] == [
        "${__data.fields.external_url}certificates?ca=${__data.fields.ca_id}"
        "&tenant=${__data.fields.tenant}&within_days=7"
    ]
    # The fields the link reads are in every row (hidden, but there).
    for target in table["targets"]:
        assert "by (tenant, ca, ca_id, external_url)" in target["expr"]
        assert "group_left (external_url) intune_cloudpki_exporter_web_info" in target["expr"]


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule."""
    promtool = require_binary("promtool")
    values = dict(BUILTIN_INTERVALS) | dict.fromkeys(QUERY_VARIABLES, ".+")
    rules = [
        {"record": f"dashboard:query_{index}", "expr": substitute(target["expr"], values)}
        for index, target in enumerate(
            t for p in iter_panels(dashboard) for t in p.get("targets", [])
        )
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# ------------------------------------------------------- the checker itself can fail


def _first(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in iter_panels(dashboard) if p.get("title") == title)


def _set_expr(title: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target = _first(d, title)["targets"][0]
        assert old in target["expr"], f"mutation out of date: {old!r} not in {target['expr']!r}"
        target["expr"] = target["expr"].replace(old, new)

    return mutate


def _variable(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in d["templating"]["list"] if v["name"] == name)


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "panel without description": (
        lambda d: _first(d, "Revocations").pop("description"),
        "panel 'Revocations': no description",
    ),
    "panel without unit": (
        lambda d: _first(d, "Graph throttling")["fieldConfig"]["defaults"].pop("unit"),
        "panel 'Graph throttling': no unit",
    ),
    "invalid unit": (
        lambda d: _first(d, "Refresh duration per CA")["fieldConfig"]["defaults"].update(
            unit="seconds"
        ),
        "unit 'seconds' is not a Grafana unit",
    ),
    "hard-coded panel datasource": (
        lambda d: _first(d, "CAs monitored").update(
            datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        ),
        "panel 'CAs monitored': datasource must be",
    ),
    "hard-coded target datasource": (
        lambda d: _first(d, "CAs monitored")["targets"][0].update(datasource="Prometheus"),
        "hard-coded $.panels[2].targets[0].datasource = 'Prometheus'",
    ),
    "query without job matcher": (
        _set_expr("CAs monitored", 'job=~"$job", ', ""),
        'intune_cloudpki_ca_info lacks the matcher job=~"$job"',
    ),
    "query without ca matcher": (
        _set_expr("Active certificates", ', ca=~"$ca"', ""),
        'intune_cloudpki_leaf_certificates lacks the matcher ca=~"$ca"',
    ),
    "counter rate over a fixed range": (
        _set_expr("Refresh failures by reason", "[$__rate_interval]", "[5m]"),
        "counter intune_cloudpki_refresh_failures_total must be read as rate/increase",
    ),
    "counter read raw": (
        _set_expr(
            "Graph requests by status code",
            "rate(intune_cloudpki_graph_requests_total",
            "(intune_cloudpki_graph_requests_total",
        ),
        "counter intune_cloudpki_graph_requests_total must be read as rate/increase",
    ),
    "metric not in the spec": (
        _set_expr("CAs monitored", "intune_cloudpki_ca_info", "intune_cloudpki_ca_infos"),
        "unknown metric 'intune_cloudpki_ca_infos'",
    ),
    "datasource variable listing loki": (
        lambda d: _variable(d, "datasource").update(query="loki"),
        "variable 'datasource' must list prometheus data sources",
    ),
    "no ca variable": (
        lambda d: d["templating"]["list"].remove(_variable(d, "ca")),
        "no 'ca' variable",
    ),
    "instance variable not chained on job": (
        lambda d: _variable(d, "instance").update(
            query="label_values(intune_cloudpki_exporter_build_info, instance)"
        ),
        "variable 'instance': intune_cloudpki_exporter_build_info lacks the matcher job",
    ),
    "single-value tenant variable": (
        lambda d: _variable(d, "tenant").update(multi=False),
        "variable 'tenant': must be multi-value",
    ),
    "other uid": (lambda d: d.update(uid="abc123"), "uid must be 'intune-cloudpki'"),
    "overlapping panels": (
        lambda d: _first(d, "CAs monitored")["gridPos"].update(x=0),
        "panel 'CAs monitored' overlaps panel 'Active certificates'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_checker_rejects_a_broken_dashboard(dashboard: dict[str, Any], case: str) -> None:
    mutate, expected = BROKEN[case]
    broken = copy.deepcopy(dashboard)
    mutate(broken)
    problems = lint_dashboard(broken)
    assert any(expected in problem for problem in problems), problems


def test_selector_reader() -> None:
    expr = (
        'sum by (tenant) (rate(intune_cloudpki_graph_requests_total{code="429", job=~"$job"}'
        '[$__rate_interval])) / on (tenant) group_left count(up{job=~"a{b}"}) or vector(0)'
        " - time() offset 5m"
    )
    assert [(name, matchers) for name, matchers, _, _ in selectors(expr)] == [
        ("intune_cloudpki_graph_requests_total", {"code": "=429", "job": "=~$job"}),
        ("up", {"job": "=~a{b}"}),
    ]


def test_crl_metrics_are_in_the_readme_table() -> None:
    """The revocation (CRL) metrics are documented in the README's metric table."""
    in_table = set(
        re.findall(r"^\| `(intune_cloudpki_\w+)` \|", (REPO / "README.md").read_text(), re.M)
    )
    assert set(CRL_METRICS) - in_table == set()
