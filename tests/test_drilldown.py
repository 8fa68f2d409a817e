"""pki_exporter.web.drilldown: certificates_page on a hand-made Store.

Every mode, the rows and their order, the personal data each mode shows, and the one-line
errors, in JSON and HTML, with exact values.
"""

from __future__ import annotations

import json
from array import array
from datetime import UTC, datetime
from typing import Any

import pytest

from pki_exporter.aggregate.certificates import LeafAggregate
from pki_exporter.aggregate.devices import DRILLDOWN_CAP, AtRiskDevice, DeviceAggregate
from pki_exporter.graph.records import CARecord
from pki_exporter.state import CASnapshot, Store
from pki_exporter.web.drilldown import HTML, JSON, TEXT, certificates_page

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
WINDOWS = (7, 30, 90)
CA_A = "0a000000-0000-4000-8000-00000000000a"
CA_B = "0b000000-0000-4000-8000-00000000000b"
CA_C = "0c000000-0000-4000-8000-00000000000c"


def device(days: float, n: int, platform: str = "iOS") -> AtRiskDevice:
    return AtRiskDevice(
        end=NOW + days * DAY,
        device_id=f"dev-{n}",
        device_name=f"Phone of person {n}",
        user=f"person{n}@contoso.com",
        platform=platform,
        serial_number=f"0{n}AB",
        thumbprint=f"T{n}",
    )


def snapshot(ca_id: str, rows: tuple[AtRiskDevice, ...], devices: dict[str, int]) -> CASnapshot:
    info = CARecord(ca_id, None, "active", "issuing", "rsa2048", "sha256", "software", None)
    leaves = LeafAggregate({}, None, (), None, 0, 0)
    aggregate = DeviceAggregate(
        devices=devices,
        expiring=(),
        renewal_due=(),
        without_device=0,
        at_risk_ends=array("d", [r.end for r in rows]),
        rows=rows,
        complete_until=None,
        largest_window=90,
        now=NOW,
    )
    return CASnapshot(info, leaves, NOW, aggregate)


@pytest.fixture
def store() -> Store:
    """contoso: A (3 devices at risk within 90 days of 4), B (no data: its refresh failed);
    fabrikam: C (1 of 1)."""
    made = Store(["contoso", "fabrikam"])
    made.set_cas("contoso", {CA_A: "Issuing A", CA_B: "B <script>"})
    made.set_cas("fabrikam", {CA_C: "Issuing C"})
    rows_a = (device(1, 1), device(3, 2, "Windows"), device(20, 3))
    made.record_success(
        "contoso", CA_A, "Issuing A", snapshot(CA_A, rows_a, {"iOS": 3, "Windows": 1}), 1.0
    )
    made.record_failure("contoso", CA_B, "http_5xx", "HTTP 500 boom", NOW, 0.5)
    made.record_success(
        "fabrikam", CA_C, "Issuing C", snapshot(CA_C, (device(2, 9),), {"iOS": 1}), 1.0
    )
    return made


def page(store: Store, query: str, mode: str = "full", accept: str = "") -> tuple[int, Any, str]:
    answer = certificates_page(store, query, WINDOWS, mode=mode, accept=accept)
    body: Any = answer.body.decode()
    if answer.content_type == JSON:
        body = json.loads(body)
    return answer.status, body, answer.content_type


def row(n: int, days: float, platform: str = "iOS", full: bool = True) -> dict[str, Any]:
    end = NOW + days * DAY
    return {
        "device_id": f"dev-{n}",
        "device_name": f"Phone of person {n}" if full else None,
        "user": f"person{n}@contoso.com" if full else None,
        "platform": platform,
        "serial_number": f"0{n}AB",
        "thumbprint": f"T{n}",
        "end": datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z"),
        "end_timestamp": end,
    }


# --------------------------------------------------------------------------- one CA


def test_one_ca_in_json_lists_its_devices_at_risk_soonest_first(store: Store) -> None:
    status, body, content_type = page(store, f"ca={CA_A}&format=json")
    assert (status, content_type) == (200, JSON)
    assert body == {
        "tenant": "contoso",
        "ca_id": CA_A,
        "ca": "Issuing A",
        "within_days": 7,
        "limit": DRILLDOWN_CAP,
        "cap": DRILLDOWN_CAP,
        "personal_data": True,
        "read_at": "2026-11-26T12:00:00Z",
        "read_at_timestamp": NOW,
        "devices": 4,
        "devices_at_risk": 2,
        "complete": True,
        "complete_until": None,
        "rows": [row(1, 1), row(2, 3, "Windows")],
        "message": None,
    }


def test_a_ca_is_found_by_name_or_by_id_in_any_case(store: Store) -> None:
    by_id = page(store, f"ca={CA_A}&within_days=30&format=json")[1]
    assert page(store, "ca=Issuing+A&within_days=30&format=json")[1] == by_id
    assert page(store, f"ca={CA_A.upper()}&within_days=30&format=json")[1] == by_id
    assert [r["device_id"] for r in by_id["rows"]] == ["dev-1", "dev-2", "dev-3"]
    assert by_id["devices_at_risk"] == 3


def test_limit_cuts_the_list_not_the_count(store: Store) -> None:
    body = page(store, f"ca={CA_A}&within_days=90&limit=1&format=json")[1]
    assert (body["limit"], body["devices_at_risk"], body["rows"]) == (1, 3, [row(1, 1)])


def test_a_ca_without_data_says_why(store: Store) -> None:
    body = page(store, f"ca={CA_B}&format=json")[1]
    assert (body["ca"], body["rows"], body["read_at"], body["devices"]) == (
        "B <script>",
        [],
        None,
        None,
    )
    assert body["message"] == (
        "No data for this CA yet: no refresh of it has succeeded (last error: HTTP 500 boom)."
    )


# --------------------------------------------------------------------------- every CA


def test_every_ca_merges_the_rows_of_all_tenants_by_end(store: Store) -> None:
    body = page(store, "format=json")[1]
    where = [(r["tenant"], r["ca"], r["device_id"]) for r in body["rows"]]
    assert where == [
        ("contoso", "Issuing A", "dev-1"),
        ("fabrikam", "Issuing C", "dev-9"),
        ("contoso", "Issuing A", "dev-2"),
    ]
    assert (body["devices"], body["devices_at_risk"], body["tenant"], body["ca"]) == (
        5,
        3,
        None,
        None,
    )
    assert body["message"] == "No data yet (no successful refresh) for: contoso/B <script>."


def test_tenant_narrows_every_ca(store: Store) -> None:
    body = page(store, "tenant=fabrikam&format=json")[1]
    assert [r["device_id"] for r in body["rows"]] == ["dev-9"]
    assert (body["tenant"], body["message"]) == ("fabrikam", None)


# --------------------------------------------------------------------------- modes


def test_devices_mode_shows_no_personal_data(store: Store) -> None:
    body = page(store, f"ca={CA_A}&format=json", mode="devices")[1]
    assert body["personal_data"] is False
    assert body["rows"] == [row(1, 1, full=False), row(2, 3, "Windows", full=False)]
    status, html, content_type = page(store, f"ca={CA_A}", mode="devices")
    assert (status, content_type) == (200, HTML)
    assert "person1@contoso.com" not in html and "Phone of person 1" not in html
    assert '<p id="privacy" class="muted">' in html
    assert "<td><code>dev-1</code></td>" in html


def test_full_mode_html_names_people_and_escapes(store: Store) -> None:
    status, html, _ = page(store, "")
    assert status == 200
    assert '<td class="name">person1@contoso.com</td>' in html
    assert "B &lt;script&gt;" in html and "B <script>" not in html
    assert '<p id="summary"><strong>3</strong> of 5 devices of these CAs' in html


@pytest.mark.parametrize("fmt", ["", "&format=json"])
def test_off_mode_is_404(store: Store, fmt: str) -> None:
    status, body, content_type = page(store, f"ca={CA_A}{fmt}", mode="off")
    message = "the drill-down is off (--web.drilldown=off)"
    if fmt:
        assert (status, body, content_type) == (404, {"status": 404, "error": message}, JSON)
    else:
        assert (status, body, content_type) == (404, message + "\n", TEXT)


def test_accept_json_gets_json(store: Store) -> None:
    status, body, content_type = page(store, f"ca={CA_A}", accept="application/json")
    assert (status, content_type, body["ca_id"]) == (200, JSON, CA_A)
    assert page(store, f"ca={CA_A}", accept="text/html,application/json")[2] == HTML


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("x=1", 400, "unknown parameter 'x' (known: ca, tenant, within_days, limit, format, view)"),
        ("ca=a&ca=b", 400, "ca: given more than once"),
        ("within_days=0", 400, "within_days: must be within 1..90, got 0"),
        ("within_days=91", 400, "within_days: must be within 1..90, got 91"),
        ("within_days=-1", 400, "within_days: expected a whole number, got '-1'"),
        ("limit=1001", 400, "limit: must be within 1..1000, got 1001"),
        ("format=xml", 400, "format: html or json, got 'xml'"),
        ("ca=nope", 404, "ca: no CA 'nope' (see the status page)"),
        (
            "ca=Issuing+A&tenant=fabrikam",
            404,
            "ca: no CA 'Issuing A' of tenant 'fabrikam' (see the status page)",
        ),
        ("tenant=nope", 404, "tenant: no tenant 'nope' (see the status page)"),
    ],
)
def test_bad_queries_get_one_line(store: Store, query: str, status: int, error: str) -> None:
    assert page(store, query) == (status, error + "\n", TEXT)
    as_json = page(store, query, accept="application/json")
    if "format=" in query:  # a format named in the query wins over the Accept header
        assert as_json == (status, error + "\n", TEXT)
    else:
        assert as_json == (status, {"status": status, "error": error}, JSON)


def test_a_name_shared_by_two_cas_needs_the_id(store: Store) -> None:
    store.set_cas("fabrikam", {CA_C: "Issuing A"})
    assert page(store, "ca=Issuing+A") == (
        400,
        "ca: 'Issuing A' names 2 CAs; give the CA id or tenant=\n",
        TEXT,
    )
    assert page(store, "ca=Issuing+A&tenant=fabrikam&format=json")[1]["ca_id"] == CA_C
