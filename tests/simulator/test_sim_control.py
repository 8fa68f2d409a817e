"""The control API over HTTP, and the ``simulate`` command as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msal
import pytest
import requests
import yaml
from pki_simulator import Simulator

from tests.exporter_proc import LineReader, reap

from .helpers import ACTION, ANCHOR, GraphClient, tls


@pytest.fixture
def control(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{sim.url}/_simulator", verify=tls(sim), trust_env=False) as client:
        yield client


def test_faults_over_http(sim: Simulator, graph: GraphClient, control: httpx.Client) -> None:
    created = control.post("/faults", json={"kind": "throttle", "retry_after": 2, "times": 1})
    assert created.status_code == 201
    fault_id = created.json()["id"]
    assert [f["id"] for f in control.get("/faults").json()["faults"]] == [fault_id]
    throttled = graph.http.get(graph.url())
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    assert graph.http.get(graph.url()).status_code == 200
    page_error = control.post("/faults", json={"kind": "page_error"}).json()["id"]
    assert graph.http.get(graph.url()).status_code == 500
    assert control.delete(f"/faults/{page_error}").status_code == 200
    assert control.delete(f"/faults/{page_error}").status_code == 404
    control.post("/faults", json={"kind": "unavailable"})
    assert control.delete("/faults").status_code == 200
    assert graph.http.get(graph.url()).status_code == 200
    bad = control.post("/faults", json={"kind": "meteor"})
    assert bad.status_code == 400
    assert "meteor" in bad.json()["error"]


def test_token_expiry_over_http(sim: Simulator, graph: GraphClient, control: httpx.Client) -> None:
    assert graph.http.get(graph.url()).status_code == 200
    assert control.post("/faults", json={"kind": "token_expiry"}).status_code == 201
    assert graph.http.get(graph.url()).status_code == 401


def test_log_over_http_holds_no_secrets(
    sim: Simulator, graph: GraphClient, control: httpx.Client
) -> None:
    graph.leaves(sim.tenants[0].cas[0].id)
    entries = control.get("/log").json()["entries"]
    leaves = [e for e in entries if e["endpoint"] == "leaves"]
    assert [e["page"] for e in leaves] == [0, 1, 2]
    assert all(e["had_authorization"] for e in leaves)
    text = json.dumps(entries)
    assert sim.tenants[0].client_secret not in text
    assert graph.http.headers["Authorization"].split()[1] not in text
    assert control.delete("/log").status_code == 200
    assert [e["endpoint"] for e in control.get("/log").json()["entries"]] == ["control"]


def test_ground_truth_over_http(sim: Simulator, control: httpx.Client) -> None:
    now = ANCHOR.isoformat().replace("+00:00", "Z")
    body = control.get("/ground-truth", params={"now": now, "windows": "7,30"}).json()
    assert body["now"] == ANCHOR.timestamp()
    assert body["windows"] == [7, 30]
    served = {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in body["samples"]}
    assert served == sim.expected_samples(ANCHOR, (7, 30))
    assert control.get("/ground-truth", params={"now": "yesterday"}).status_code == 400


def test_info_over_http(sim: Simulator, control: httpx.Client) -> None:
    info = control.get("/info").json()
    assert info["url"] == sim.url
    assert [c["ca_id"] for c in info["cas"]] == [c.id for c in sim.tenants[0].cas]
    assert sim.tenants[0].client_secret not in json.dumps(info)


def _read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    """The lines up to ``marker``, read with a deadline (30 s for all)."""
    reader = LineReader(process.stdout)
    reader.until(lambda line: marker in line)
    return [line.rstrip("\n") for line in reader.lines]


def _field(lines: list[str], name: str) -> str:
    return next(line.split(":", 1)[1].split()[0] for line in lines if line.startswith(name + ":"))


def test_the_command_prints_a_working_setup(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CA_BUNDLE")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pki_simulator", "--port", "0", "--cas", "2", "--certificates", "30",
            "--page-size", "10", "--seed", "4", "--anchor", "2025-06-01T12:00:00Z",
            "--fault", "throttle:times=1,retry_after=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        lines = _read_until(process, "Serving until interrupted")
        url = _field(lines, "Graph URL")
        assert _field(lines, "Authority URL") == url
        tenant_id = _field(lines, "Tenant id")
        client_id = _field(lines, "Client id")
        secret = _field(lines, "Client secret")
        bundle = _field(lines, "CA bundle")
        text = "\n".join(lines)
        config_text = text.split("Exporter config (paste into config.yaml):", 1)[1].split(
            "export "
        )[0]
        config = yaml.safe_load(config_text)
        tenant = config["tenants"][0]
        assert tenant["tenant_id"] == tenant_id
        assert tenant["client_id"] == client_id
        assert tenant["authority_host"] == tenant["graph_url"] == url
        assert tenant["ca_bundle"] == bundle
        assert tenant["credential"] == {"client_secret_env": "PKI_EXPORTER_CLIENT_SECRET"}
        assert f"export PKI_EXPORTER_CLIENT_SECRET='{secret}'" in lines

        session = requests.Session()
        session.verify = bundle
        session.trust_env = False
        app = msal.ConfidentialClientApplication(
            client_id,
            client_credential=secret,
            authority=f"{url}/{tenant_id}",
            instance_discovery=False,
            http_client=session,
        )
        token = app.acquire_token_for_client([f"{url}/.default"])["access_token"]
        import ssl

        with httpx.Client(
            verify=ssl.create_default_context(cafile=bundle),
            trust_env=False,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            root = f"{url}/beta/deviceManagement/cloudCertificationAuthority"
            assert client.get(root).status_code == 429  # the --fault
            cas = client.get(root).json()["value"]
            assert len(cas) == 2
            first = client.post(f"{root}/{cas[0]['id']}/{ACTION}").json()
            assert len(first["value"]) == 10
    finally:
        code = reap(process)  # SIGTERM; killed (and failed) if not gone within 10 s
    assert code == 0
    assert not Path(bundle).exists()  # the temporary directory is cleaned up


def test_the_command_refuses_a_bad_fault() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pki_simulator", "--fault", "meteor"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "meteor" in result.stderr
