"""--web.drilldown: what /certificates shows of the people behind the devices.

Each mode runs the real exporter against the simulated tenant, whose ground truth names
every user principal and device: ``off`` serves none of it, ``devices`` (the default) no
user and no device name, ``full`` everything. One warning at start when ``full`` is served
without TLS and a password (or client certificates); /metrics never carries any of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ANCHOR
from tests.exporter_proc import ExporterProcess
from tests.test_hostile_clients import start_exporter
from tests.tlsutil import issue_cert, make_ca

pytestmark = pytest.mark.timeout(120)

WARNING = "/certificates serves personal data"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[Any, ExporterProcess]] = []

    def start(
        *args: str, web_config: Path | None = None, auth: tuple[str, str] | None = None
    ) -> tuple[Any, ExporterProcess]:
        workdir = tmp_path / str(len(started))
        workdir.mkdir()
        sim, proc = start_exporter(workdir, *args, web_config=web_config, auth=auth)
        started.append((sim, proc))
        return sim, proc

    yield start
    for sim, proc in started:
        proc.stop()
        sim.close()


def _people(sim: Any) -> tuple[set[str], set[str], list[dict[str, Any]]]:
    """Users and device names of the devices at risk within 90 days, and those rows."""
    rows = [
        row for ca in sim.tenants[0].cas for row in sim.expected_devices_at_risk(ANCHOR, ca.id, 90)
    ]
    users = {r["user"] for r in rows if r["user"]}
    names = {r["device_name"] for r in rows if r["device_name"]}
    assert len(users) >= 5 and len(names) >= 5, "the data set must name people"
    return users, names, rows


def _pages(proc: ExporterProcess) -> str:
    texts = [
        proc.get("/").text,
        proc.get("/certificates?within_days=90").text,
        proc.get("/certificates?within_days=90&format=json").text,
        proc.get("/metrics").text,
    ]
    listing = json.loads(proc.get("/certificates?within_days=90&format=json").text)
    for ca in listing.get("rows", []):
        texts.append(proc.get(f"/certificates?ca={ca['ca_id']}&within_days=90").text)
    return "\n".join(texts)


def test_default_shows_devices_without_people(run: Any) -> None:
    sim, proc = run()
    users, names, rows = _people(sim)
    text = _pages(proc)
    assert not [u for u in users if u in text]
    assert not [n for n in names if n in text]
    document = proc.get("/certificates?within_days=90&format=json").json()
    assert document["personal_data"] is False
    assert sorted(r["device_id"] for r in document["rows"]) == sorted(r["device_id"] for r in rows)
    assert {(r["user"], r["device_name"]) for r in document["rows"]} == {(None, None)}
    html = proc.get("/certificates?within_days=90").text
    assert "<th>device id</th>" in html and "<th>user</th>" not in html
    assert "--web.drilldown=devices" in html
    assert WARNING not in proc.log()


def test_full_shows_everything_and_warns_once_without_tls(run: Any) -> None:
    sim, proc = run("--web.drilldown", "full")
    users, names, rows = _people(sim)
    document = proc.get("/certificates?within_days=90&format=json").json()
    assert document["personal_data"] is True
    got = {(r["device_id"], r["user"], r["device_name"]) for r in document["rows"]}
    assert got == {(r["device_id"], r["user"], r["device_name"]) for r in rows}
    html = proc.get("/certificates?within_days=90").text
    assert all(u in html for u in users)
    metrics = proc.get("/metrics").text
    assert not [u for u in users if u in metrics] and not [n for n in names if n in metrics]
    for row in rows:  # nor a device id, a serial number or a thumbprint
        for value in (row["device_id"], row["serial_number"], row["thumbprint"]):
            assert not value or value not in metrics, value
    warnings = [line for line in proc.log().splitlines() if WARNING in line]
    assert len(warnings) == 1 and "level=warn " in warnings[0], proc.log()


def test_full_behind_tls_and_basic_auth_does_not_warn(run: Any, tmp_path: Path) -> None:
    from tests.test_webconfig import bcrypt_hash

    ca = make_ca()
    cert, key = issue_cert(ca, "localhost", ["127.0.0.1"]).write(tmp_path, "server")
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"admin": bcrypt_hash("pw")},
            }
        )
    )
    _sim, proc = run_tls(run, web)
    assert WARNING not in proc.log()
    # TLS without a password or client certificates: anyone can still read the names.
    tls_only = tmp_path / "tls-only.yml"
    tls_only.write_text(
        yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    )
    _sim, proc = run_tls(run, tls_only)
    assert proc.log().count(WARNING) == 1


def run_tls(run: Any, web: Path) -> tuple[Any, ExporterProcess]:
    """``--web.drilldown=full`` behind the web config, probed over HTTPS as admin."""
    sim, proc = run("--web.drilldown", "full", web_config=web, auth=("admin", "pw"))
    assert proc.url.startswith("https://")
    assert proc.get("/certificates?format=json").json()["personal_data"] is True
    return sim, proc


def test_off_serves_no_drilldown(run: Any) -> None:
    sim, proc = run("--web.drilldown", "off")
    users, names, _rows = _people(sim)
    for query, content_type in (("", "text/plain"), ("format=json", "application/json")):
        response = proc.get(f"/certificates?{query}")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith(content_type)
        assert "the drill-down is off (--web.drilldown=off)" in response.text
        assert response.text.count("\n") == 1
    status = proc.get("/").text
    assert "/certificates" not in status and 'class="drilldown' not in status
    text = _pages(proc)
    assert not [u for u in users if u in text] and not [n for n in names if n in text]
    assert WARNING not in proc.log()


def test_a_wrong_mode_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--web.drilldown", "everything"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--web.drilldown: invalid choice: 'everything'" in result.stderr
    assert "Traceback" not in result.stderr


def test_web_config_headers_override_the_defaults(run: Any, tmp_path: Path) -> None:
    web = tmp_path / "headers.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "http_server_config": {
                    "headers": {
                        "Content-Security-Policy": "default-src 'self'",
                        "X-Frame-Options": "deny",
                    }
                }
            }
        )
    )
    _sim, proc = run(web_config=web)
    for path in ("/", "/certificates", "/metrics"):
        response = proc.get(path)
        assert response.headers.get_list("content-security-policy") == ["default-src 'self'"]
        assert response.headers["x-frame-options"] == "deny"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
