"""The status page and the drill-down in a real browser: headless Chromium, driven by
Playwright.

Debian's ``chromium`` (scripts/install-system-deps.sh installs it as root) is driven through
Playwright's Python package with ``executable_path``: Playwright's own browser downloads are
never used (``playwright install`` is not run; there is no network for it). The exporter
runs as a real process behind TLS and basic auth, against the simulated tenant with a
frozen clock, so every row on the pages is known exactly from the simulator's ground truth.
Screenshots land in ``test-output/browser/`` at the repository root for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import ExporterProcess, base_env, tenant_config, write_config
from tests.promstack import REPO
from tests.test_webconfig import bcrypt_hash
from tests.tlsutil import issue_cert, make_ca

CHROMIUM = "/usr/bin/chromium"
OUTPUT = REPO / "test-output" / "browser"
TENANT = "contoso"
BROKEN_CA = "Contoso Devices CA"
ODD_CA = 'Lab <b>CA</b> & "friends"'  # escaped everywhere, never markup
FAILING_CA = "Contoso Failing CA"
EXPIRED_CA = "Contoso Old CA"
EXPIRED_CA_ID = "4d5e6f7a-8b9c-4dae-8f01-2b3c4d5e6f7a"
RED, AMBER = "rgb(180, 35, 24)", "rgb(181, 71, 8)"
TENANT_ID = "5d7b3c1e-8f2a-4b6c-9d0e-1f2a3b4c5d6e"
CLIENT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BROKEN_CA_ID = "8e9f0a1b-2c3d-4e5f-8a7b-6c5d4e3f2a1b"
ODD_CA_ID = "2b3a5c1e-7d4f-4e8a-9b6c-0d1e2f3a4b5c"
FAILING_CA_ID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
USER, PASSWORD = "admin", "browse-me"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]

pytestmark = pytest.mark.timeout(180)


def _chromium() -> str:
    """Debian's chromium, or a skip for an unprivileged user (a failure for root, who can
    and should have installed it: a silent skip would hide that it did not)."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path:
        return path
    if os.geteuid() == 0:
        pytest.fail("chromium is not installed; run scripts/install-system-deps.sh")
    pytest.skip("chromium is not installed; run scripts/install-system-deps.sh as root")


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.geteuid() == 0:
            pytest.fail("playwright is not installed: pip install -e '.[dev]'")
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    return sync_playwright


class _Exporter(ExporterProcess):
    """The exporter behind TLS: readiness is polled with its CA and the credentials."""

    ca_file: ssl.SSLContext | None = None

    def wait_http(self, path: str, timeout: float = 30.0, **kw: Any) -> httpx.Response:
        kw.setdefault("verify", self.ca_file)
        kw.setdefault("auth", (USER, PASSWORD))
        return super().wait_http(path, timeout, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("verify", self.ca_file)
        kw.setdefault("auth", (USER, PASSWORD))
        return super().get(path, **kw)


@dataclass
class Site:
    sim: Any
    exporter: _Exporter
    browser: Any  # a Playwright BrowserContext

    @property
    def url(self) -> str:
        return self.exporter.url


def _dataset() -> Any:
    from pki_simulator import CASpec, DatasetSpec, TenantSpec

    common: dict[str, Any] = {"quirk_share": 0.0, "page_size": 100}
    return DatasetSpec(
        seed=8,
        anchor=ANCHOR,
        tenants=(
            TenantSpec(
                tenant_id=TENANT_ID,
                client_id=CLIENT_ID,
                name=TENANT,
                cas=(
                    # Renewal broken for 30 % of the active certificates: a dozen devices.
                    CASpec(
                        id=BROKEN_CA_ID,
                        display_name=BROKEN_CA,
                        certificates=60,
                        broken_renewal_share=0.3,
                        **common,
                    ),
                    CASpec(id=ODD_CA_ID, display_name=ODD_CA, certificates=400, **common),
                    CASpec(id=FAILING_CA_ID, display_name=FAILING_CA, certificates=10, **common),
                    # The CA's own certificate ended 5 days ago: styled as expired.
                    CASpec(
                        id=EXPIRED_CA_ID,
                        display_name=EXPIRED_CA,
                        certificates=10,
                        valid_from_days=-1800,
                        valid_until_days=-5,
                        **common,
                    ),
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    executable = _chromium()
    sync_playwright = _playwright()
    from pki_simulator import Fault, Simulator

    workdir = tmp_path_factory.mktemp("browser")
    ca = make_ca()
    server_cert, server_key = issue_cert(ca, "localhost", ["127.0.0.1", "localhost"]).write(
        workdir, "server"
    )
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca.cert_pem())
    web = workdir / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(server_cert), "key_file": str(server_key)},
                "basic_auth_users": {USER: bcrypt_hash(PASSWORD)},
            }
        )
    )
    sim = Simulator.from_spec(_dataset()).start()
    # One CA never refreshes: its drill-down says so.
    sim.faults.add(Fault(kind="page_error", ca_id=FAILING_CA_ID, status=403))
    try:
        (tenant,) = sim.tenants
        config = write_config(
            workdir / "pki-exporter.yml",
            [tenant_config(sim, tenant, TENANT)],
            refresh={"interval": "1h", "timeout": "5s", "concurrency": 2},
        )
        exporter = _Exporter(  # on port 0: ExporterProcess reads the bound port from its log
            args=[
                "--config.file",
                str(config),
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.config.file",
                str(web),
                "--web.drilldown",
                "full",
            ],
            env=base_env(SECRET_CONTOSO=tenant.client_secret, PKI_EXPORTER_FAKE_NOW=FAKE_NOW),
            cwd=workdir,
            scheme="https",
        )
        exporter.ca_file = ssl.create_default_context(cafile=str(ca_file))
        exporter.start(wait_ready=True)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile,
            sync_playwright() as playwright,
        ):
            context = playwright.chromium.launch_persistent_context(
                profile,  # a fresh --user-data-dir
                executable_path=executable,
                headless=True,
                args=LAUNCH_ARGS,
                ignore_https_errors=True,
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(15_000)
            try:
                yield Site(sim, exporter, context)
            finally:
                context.close()
        exporter.stop()
    finally:
        sim.close()


def _truth_rows(site: Site, ca_id: str, days: int) -> list[dict[str, Any]]:
    return site.sim.expected_devices_at_risk(ANCHOR, ca_id, days)


def _table(page: Any, selector: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return rows


def _ca_row(page: Any, ca_id: str) -> Any:
    return page.locator("#cas tr", has_text=ca_id)


def test_status_page_links_each_ca_to_its_devices_at_risk(site: Site) -> None:
    page = site.browser.new_page()
    response = page.goto(site.url + "/")
    assert response is not None and response.status == 200
    assert page.title() == "pki-exporter"
    truth = site.sim.expected_samples(ANCHOR, (7, 30, 90), {TENANT_ID: TENANT})
    for ca_id in (BROKEN_CA_ID, ODD_CA_ID):
        expiring = sum(
            v
            for (name, labels), v in truth.items()
            if name == "intune_cloudpki_devices_expiring"
            and dict(labels)["ca_id"] == ca_id
            and dict(labels)["within_days"] == "7"
        )
        link = _ca_row(page, ca_id).locator("a.drilldown")
        assert link.inner_text() == str(int(expiring))
    # The odd name is shown as text, not as markup.
    assert _ca_row(page, ODD_CA_ID).locator("b").count() == 0
    assert ODD_CA in _ca_row(page, ODD_CA_ID).inner_text()
    page.screenshot(path=str(OUTPUT / "status-page.png"), full_page=True)

    _ca_row(page, BROKEN_CA_ID).locator("a.drilldown").click()
    page.wait_for_load_state()
    query = parse_qs(urlsplit(page.url).query)
    assert urlsplit(page.url).path == "/certificates"
    assert query == {"ca": [BROKEN_CA_ID], "tenant": [TENANT], "within_days": ["7"]}
    assert page.locator("h1").inner_text() == f"Devices at risk: {BROKEN_CA}"
    page.close()


def test_drilldown_shows_the_devices_that_did_not_renew(site: Site) -> None:
    page = site.browser.new_page()
    page.goto(f"{site.url}/certificates?ca={BROKEN_CA_ID}&within_days=7")
    want = _truth_rows(site, BROKEN_CA_ID, 7)
    assert len(want) >= 5, "the data set must have devices at risk for this test to mean much"
    rows = _table(page, "#devices")
    assert [r[1:6] for r in rows] == [
        [
            r["device_name"] or "-",
            r["user"] or "-",
            r["platform"],
            r["serial_number"] or "-",
            r["thumbprint"] or "-",
        ]
        for r in want
    ]
    ends = page.eval_on_selector_all("#devices td.when", "cells => cells.map(c => c.title)")
    assert ends == [r["end"] for r in want]
    assert [r[6] for r in rows] == [r["end"][:16].replace("T", " ") for r in want]
    summary = page.locator("#summary").inner_text()
    assert summary.startswith(f"{len(want)} of ")
    assert "at most 1000 devices" in summary
    page.screenshot(path=str(OUTPUT / "drilldown.png"), full_page=True)

    # Another window, by its link: the list follows the truth.
    page.locator("#windows a", has_text="90 days").click()
    page.wait_for_load_state()
    want_90 = _truth_rows(site, BROKEN_CA_ID, 90)
    assert len(want_90) > len(want)
    assert [r[4] for r in _table(page, "#devices")] == [r["serial_number"] for r in want_90]

    # The JSON link carries the same rows.
    href = page.locator("#json").get_attribute("href")
    assert href is not None
    page.goto(site.url + href)
    document = json.loads(page.locator("body").inner_text())
    assert document["rows"] == want_90
    assert document["devices_at_risk"] == len(want_90) and document["complete"] is True
    page.close()


def test_limit_name_lookup_and_links_back(site: Site) -> None:
    page = site.browser.new_page()
    page.goto(f"{site.url}/certificates?ca={BROKEN_CA.replace(' ', '+')}&limit=3&within_days=30")
    want = _truth_rows(site, BROKEN_CA_ID, 30)
    assert [r[1] for r in _table(page, "#devices")] == [r["device_name"] for r in want[:3]]
    assert "at most 3 devices" in page.locator("#summary").inner_text()
    page.locator("nav a", has_text="Metrics").click()
    page.wait_for_load_state()
    assert urlsplit(page.url).path == "/metrics"
    assert "intune_cloudpki_devices_expiring{" in page.locator("body").inner_text()
    page.go_back()
    page.locator("nav a", has_text="Status page").click()
    page.wait_for_load_state()
    assert urlsplit(page.url).path == "/" and page.locator("#cas").is_visible()
    page.close()


def test_escaping_an_empty_list_and_a_ca_without_data(site: Site) -> None:
    page = site.browser.new_page()
    page.goto(f"{site.url}/certificates?ca={ODD_CA_ID}&within_days=1")
    assert page.locator("h1").inner_text() == f"Devices at risk: {ODD_CA}"
    assert page.locator("h1 b").count() == 0
    if not _truth_rows(site, ODD_CA_ID, 1):
        assert (
            "No device of this CA is at risk within 1 days" in page.locator("#message").inner_text()
        )
    page.goto(f"{site.url}/certificates?ca={FAILING_CA_ID}")
    message = page.locator("#message").inner_text()
    assert message.startswith("No data for this CA yet: no refresh of it has succeeded")
    page.screenshot(path=str(OUTPUT / "drilldown-no-data.png"), full_page=True)
    page.close()


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("tenant=nobody", 404, "tenant: no tenant 'nobody' (see the status page)"),
        (f"ca={BROKEN_CA_ID}&within_days=91", 400, "within_days: must be within 1..90, got 91"),
        (f"ca={BROKEN_CA_ID}&within_days=seven", 400, "within_days: expected a whole number"),
        (f"ca={BROKEN_CA_ID}&limit=1001", 400, "limit: must be within 1..1000, got 1001"),
        (f"ca={BROKEN_CA_ID}&format=xml", 400, "format: html or json, got 'xml'"),
        (f"ca={BROKEN_CA_ID}&ca=x", 400, "ca: given more than once"),
        (f"ca={BROKEN_CA_ID}&days=7", 400, "unknown parameter 'days'"),
        ("ca=no-such-ca", 404, "ca: no CA 'no-such-ca' (see the status page)"),
    ],
)
def test_bad_queries_get_one_line(site: Site, query: str, status: int, message: str) -> None:
    page = site.browser.new_page()
    response = page.goto(f"{site.url}/certificates?{query}")
    assert response is not None and response.status == status
    text = page.locator("body").inner_text().strip()
    assert text.startswith(message) and "\n" not in text
    page.close()


def test_the_drilldown_is_behind_the_web_config(site: Site) -> None:
    url = f"{site.url}/certificates?ca={BROKEN_CA_ID}"
    verify = site.exporter.ca_file
    assert httpx.get(url, verify=verify).status_code == 401
    assert httpx.get(url, verify=verify, auth=(USER, "wrong")).status_code == 401
    try:  # plain HTTP gets no page
        plain = httpx.get(url.replace("https://", "http://"), timeout=5)
    except httpx.HTTPError:
        pass
    else:
        assert plain.status_code != 200
    assert httpx.get(url, verify=verify, auth=(USER, PASSWORD)).status_code == 200


def test_screenshots_were_written(site: Site) -> None:
    for name in ("status-page.png", "drilldown.png"):
        path = Path(OUTPUT / name)
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def _color(locator: Any) -> str:
    color: str = locator.evaluate("e => getComputedStyle(e).color")
    return color


def test_pages_fit_1280_pixels_without_horizontal_scrolling(site: Site) -> None:
    page = site.browser.new_page()
    for path in (
        "/",
        "/certificates",
        "/certificates?within_days=90",
        f"/certificates?ca={BROKEN_CA_ID}&within_days=90",
    ):
        response = page.goto(site.url + path)
        assert response is not None and response.status == 200, path
        assert page.viewport_size == {"width": 1280, "height": 900}
        assert page.evaluate(OVERFLOW) == 0, f"{path} scrolls sideways at 1280 px"
        # The columns that matter are on screen: the last one ends inside the viewport.
        if path.startswith("/certificates"):
            right = page.evaluate(
                "() => document.querySelector('#devices th:last-child').getBoundingClientRect().right"
            )
            assert 0 < right <= 1280, path
            assert page.locator("#devices th").last.inner_text() == "days left"
    page.goto(site.url + "/certificates?within_days=90")
    page.screenshot(path=str(OUTPUT / "drilldown-every-ca.png"), full_page=False)
    page.close()


def test_status_page_colours_what_needs_action(site: Site) -> None:
    page = site.browser.new_page()
    page.goto(site.url + "/")
    page.screenshot(path=str(OUTPUT / "status-page-1280.png"), full_page=False)
    now = ANCHOR.timestamp()
    # The expired CA: its expiry in red, "5 d ago" beside the date, its row marked.
    expired = page.locator(f'#cas tr[data-ca-id="{EXPIRED_CA_ID}"]')
    cell = expired.locator("td.ca-expiry > span")
    assert _color(cell) == RED
    assert cell.locator(".when").inner_text() == "2026-11-21 12:00"
    assert cell.locator(".rel").inner_text() == "5 d ago"
    assert "expired" in (expired.get_attribute("class") or "")
    # A healthy CA's own expiry is years away: plain text.
    healthy = page.locator(f'#cas tr[data-ca-id="{ODD_CA_ID}"] td.ca-expiry > span')
    assert "bad" not in (healthy.get_attribute("class") or "")
    # The CA whose renewals broke: its earliest expiry is days away, coloured, with "in N d/h".
    truth = site.sim.expected_samples(ANCHOR, (7, 30, 90), {TENANT_ID: TENANT})
    earliest = next(
        v
        for (name, labels), v in truth.items()
        if name == "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds"
        and dict(labels)["ca_id"] == BROKEN_CA_ID
    )
    assert earliest - now < 7 * 86400, "the data set must have a soon-expiring certificate"
    soon = page.locator(f'#cas tr[data-ca-id="{BROKEN_CA_ID}"] td.earliest > span')
    assert _color(soon) == (RED if earliest - now < 86400 else AMBER)
    assert soon.locator(".rel").inner_text().startswith("in ")
    # The failing CA: Graph's error on one line, the whole text on hover.
    error = page.locator(f'#cas tr[data-ca-id="{FAILING_CA_ID}"] .error')
    assert _color(error) == RED
    assert error.inner_text().startswith("HTTP 403") and "\n" not in error.inner_text()
    title = error.get_attribute("title") or ""
    assert "request-id" in title and "request-id" not in error.inner_text()
    box = error.bounding_box()
    assert box is not None and box["height"] < 30, "the error takes one line"
    page.close()


def test_every_ca_soonest_first_with_the_ca_as_a_column(site: Site) -> None:
    page = site.browser.new_page()
    page.goto(f"{site.url}/certificates?within_days=30&limit=8")
    want = sorted(
        [(r["end_timestamp"], BROKEN_CA, r) for r in _truth_rows(site, BROKEN_CA_ID, 30)]
        + [(r["end_timestamp"], ODD_CA, r) for r in _truth_rows(site, ODD_CA_ID, 30)]
        + [(r["end_timestamp"], EXPIRED_CA, r) for r in _truth_rows(site, EXPIRED_CA_ID, 30)],
        key=lambda t: t[0],
    )[:8]
    rows = _table(page, "#devices")
    assert [(r[1], r[2], r[5]) for r in rows] == [
        (ca, r["device_name"] or "-", r["serial_number"] or "-") for _, ca, r in want
    ]
    assert page.locator("#devices th").all_inner_texts()[:3] == ["#", "CA", "device"]
    # A CA without data is named, not hidden.
    assert FAILING_CA in page.locator("#message").inner_text()
    document = json.loads(
        site.exporter.get("/certificates?within_days=30&limit=8&format=json").text
    )
    assert [(r["ca_id"], r["serial_number"]) for r in document["rows"]] == [
        (
            {BROKEN_CA: BROKEN_CA_ID, ODD_CA: ODD_CA_ID, EXPIRED_CA: EXPIRED_CA_ID}[ca],
            r["serial_number"],
        )
        for _, ca, r in want
    ]
    assert document["ca"] is None and document["limit"] == 8
    page.close()


def test_json_requests_get_json_errors(site: Site) -> None:
    for query, headers in (
        ("format=json&within_days=900", {}),
        ("within_days=900", {"Accept": "application/json"}),
    ):
        response = site.exporter.get(f"/certificates?{query}", headers=headers)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.text.count("\n") == 1
        assert response.json() == {
            "status": 400,
            "error": "within_days: must be within 1..90, got 900",
        }
    # A browser's Accept header still gets text.
    response = site.exporter.get(
        "/certificates?within_days=900", headers={"Accept": "text/html,application/json;q=0.9"}
    )
    assert response.headers["content-type"].startswith("text/plain")


# --- issue 22: a demo that says it is one; a tenant's error told whole ---------------------


def test_the_demo_page_says_it_is_the_simulated_tenant_and_lists_its_faults(
    site: Site, tmp_path: Path
) -> None:
    """``--demo``: the page says it is sample data and which faults are deliberate, from the
    simulator's own ground truth, and they agree with the table below them (item 3)."""
    from pki_simulator import Simulator
    from pki_simulator.cli import deliberate_faults

    # The demo's data set is generated around the exporter's "now": frozen here, so that the
    # twin below is the same data set.
    anchor = datetime.now(UTC).replace(microsecond=0)
    demo = ExporterProcess(
        args=["--demo", "--web.listen-address", "127.0.0.1:0"],
        env=base_env() | {"PKI_EXPORTER_FAKE_NOW": anchor.isoformat()},
        cwd=tmp_path,
    ).start(wait_ready=True)
    try:
        page = site.browser.new_page()
        page.goto(demo.url + "/")
        page.screenshot(path=str(OUTPUT / "demo-status-page.png"), full_page=False)
        notice = page.locator("#demo")
        assert notice.is_visible()
        assert notice.inner_text().startswith(
            "Demo: this is the simulated tenant of pki-exporter --demo: generated sample data"
        )
        # The demo's data set, generated again here: the same seed gives the same faults.
        with Simulator.demo(certificates=3000, anchor=anchor) as twin:
            want = deliberate_faults(twin)
            invalid = {ca.spec.display_name: ca.facts().invalid for ca in twin.dataset.all_cas()}
        assert page.locator("#demo li").all_inner_texts() == want
        assert any("an expired CA" in line for line in want)
        assert any("Unreadable records" in line for line in want)
        # The notice and the table agree: each CA's invalid count is the one listed.
        rows = {row[0].split("\n")[0]: row for row in _table(page, "#cas")[1:]}
        assert {name: int(row[6]) for name, row in rows.items()} == invalid
        (unreadable,) = [line for line in want if line.startswith("Unreadable records")]
        for name, count in invalid.items():
            assert f"{count} in {name}" in unreadable
        at_risk = sum(int(row[-1]) for row in rows.values())
        assert any(
            line.endswith(f"; {at_risk} devices among them did not renew (at risk).")
            for line in want
        )
        # The CRL that leaves revocations out (the demo's one CRL fault).
        assert want[-1] == (
            "Contoso Issuing CA 2: 3 revoked certificates are missing from its CRL (unpublished "
            "revocations: revoked in Intune, still accepted by RADIUS and VPN)."
        )
        # The start-up lines say it too, before the page is opened.
        banner = demo.log().split("  status page: ")[1].split("  stop with Ctrl-C")[0]
        assert banner.splitlines()[1:] == [
            "  This is generated sample data (no Azure account); its faults are deliberate:",
            *[f"    - {line}" for line in want],
        ]
        page.close()
    finally:
        log = demo.stop()
    assert "Traceback" not in log


def test_a_tenant_that_is_down_shows_its_message_and_a_row_in_the_ca_table(
    site: Site, tmp_path: Path
) -> None:
    """A wrong secret: the tenants table shows Entra ID's message itself (not cut to
    ``token: invalid_client: AAD...``), and the CA table has a row saying the tenant is down
    instead of nothing (item 5)."""
    from pki_simulator import Simulator

    with Simulator.generate(tenants=2, cas=1, certificates=10, anchor=ANCHOR) as sim:
        good, bad = sim.tenants
        config = write_config(
            tmp_path / "config.yaml",
            [tenant_config(sim, good, "contoso"), tenant_config(sim, bad, "fabrikam")],
            refresh={"interval": "1h", "timeout": "5s", "concurrency": 2},
        )
        exporter = ExporterProcess(
            args=["--config.file", str(config), "--web.listen-address", "127.0.0.1:0"],
            env=base_env(
                SECRET_CONTOSO=good.client_secret,
                SECRET_FABRIKAM="not-the-secret-0123456789",
                PKI_EXPORTER_FAKE_NOW=FAKE_NOW,
            ),
            cwd=tmp_path,
        ).start(wait_ready=True)
        try:
            page = site.browser.new_page()
            page.goto(exporter.url + "/")
            page.screenshot(path=str(OUTPUT / "status-page-tenant-down.png"), full_page=False)
            message = page.locator("#tenants tr", has_text="fabrikam").locator("td.error .message")
            text = message.inner_text()
            assert text.startswith("Invalid client secret provided. Ensure the secret")
            assert "Trace ID" not in text
            assert _color(message) == RED
            # Shown whole: nothing of it is clipped.
            assert message.evaluate("e => e.scrollWidth <= e.clientWidth")
            source = page.locator("#tenants tr", has_text="fabrikam").locator("td.error .source")
            assert source.inner_text().startswith("token: invalid_client · AADSTS7000215")
            # The CA table: a row for the tenant that is down, across every column.
            down = page.locator('#cas tr.tenant-down[data-tenant="fabrikam"]')
            assert down.inner_text().startswith(
                "Tenant fabrikam is down: Invalid client secret provided."
            )
            columns = page.locator("#cas th").count()
            assert down.locator("td").get_attribute("colspan") == str(columns)
            assert page.locator("#cas tr.tenant-down").count() == 1  # contoso is up
            assert page.locator("#demo").count() == 0  # not the demo
            page.close()
        finally:
            exporter.stop()
        assert bad.client_secret not in exporter.log()
