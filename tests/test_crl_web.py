"""The unpublished revocations on /certificates (?view=unpublished) and the CRL table of
the status page, from a Store holding a real CRL."""

from __future__ import annotations

import json
from datetime import timedelta

from pki_exporter.crl.model import CRLFailure
from pki_exporter.crl.parse import parse_crl
from pki_exporter.runtime import clock
from pki_exporter.web.drilldown import certificates_page
from pki_exporter.web.pages import status_page
from tests.crlutil import NOW, make_crl
from tests.test_crl_coverage import CA, CA_ID, URL, _store

T = NOW.timestamp()


def _filled() -> object:
    store, _ = _store()
    store.record_crl(
        "contoso", CA_ID, URL, at=T, info=parse_crl(make_crl(CA, [0xB]), CA.certificate)
    )
    return store


def test_the_unpublished_revocations_of_a_ca_as_json() -> None:
    clock.freeze(T)
    try:
        store = _filled()
        for mode in ("devices", "full"):
            answer = certificates_page(
                store, f"ca={CA_ID}&view=unpublished&format=json", (7, 30), mode=mode
            )  # type: ignore[arg-type]
            assert answer.status == 200
            document = json.loads(answer.body)
            revoked = (NOW - timedelta(days=1)).timestamp()
            assert document == {
                "view": "unpublished",
                "tenant": "contoso",
                "ca_id": CA_ID,
                "ca": "Contoso",
                "limit": 1000,
                "unpublished": 1,
                "checked": True,
                "rows": [
                    {
                        "serial_number": "A",
                        "thumbprint": None,
                        "device_id": None,
                        "revoked_at": "2026-11-25T12:00:00Z",
                        "revoked_at_timestamp": revoked,
                        "crl_url": URL,
                    }
                ],
            }
        off = certificates_page(store, f"ca={CA_ID}&view=unpublished", (7,), mode="off")  # type: ignore[arg-type]
        assert off.status == 404
        bad = certificates_page(store, "view=nope&format=json", (7,))  # type: ignore[arg-type]
        assert (bad.status, json.loads(bad.body)["error"]) == (
            400,
            "view: devices or unpublished, got 'nope'",
        )
    finally:
        clock.freeze(None)


def test_the_unpublished_revocations_as_html_escape_everything() -> None:
    clock.freeze(T)
    try:
        store = _filled()
        page = certificates_page(store, "view=unpublished", (7,)).body.decode()  # type: ignore[arg-type]
        assert "<strong>1</strong> certificates were revoked in Intune" in page
        assert "<td>Contoso</td><td><code>A</code></td>" in page
        assert f"<code>{URL}</code>" in page
    finally:
        clock.freeze(None)


def test_the_status_page_shows_each_crl_time_left_entries_and_last_error() -> None:
    clock.freeze(T)
    try:
        store = _filled()
        store.record_crl("contoso", CA_ID, URL, at=T, failure=CRLFailure("http_5xx", "HTTP 503"))
        page = status_page(store, "/metrics", 300, windows=(7,))  # type: ignore[arg-type]
        assert "<h2>Revocation (CRLs)</h2>" in page
        row = page[page.index('<table id="crls">') :]
        row = row[: row.index("</table>")]
        assert f'<code class="url">{URL}</code>' in row
        assert '<span class="bad">failed</span>' in row
        assert '<span class="rel">in 7 d</span>' in row  # the last good CRL's nextUpdate
        assert "<td class=num>1</td>" in row  # entries
        assert "http_5xx: HTTP 503" in row
        assert 'view=unpublished">1</a>' in row
    finally:
        clock.freeze(None)


def test_without_crls_the_status_page_has_no_crl_table() -> None:
    store, _ = _store(grace=None)
    assert "Revocation (CRLs)" not in status_page(store, "/metrics", 300, windows=(7,))
