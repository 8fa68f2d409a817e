"""pki-exporter as a real process against the simulated tenant over TLS: exact numbers."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import (
    WINDOWS,
    Samples,
    base_env,
    certificate_samples,
    parse_samples,
    tenant_config,
    write_config,
)


def expected(sim: Any, names: dict[str, str]) -> Samples:
    return certificate_samples(
        dict(sim.expected_samples(now=ANCHOR, windows=WINDOWS, tenant_names=names))
    )


def labels_of(samples: Samples, metric: str) -> list[dict[str, str]]:
    return [dict(k[1]) for k in samples if k[0] == metric]


def value(samples: Samples, metric: str, **labels: str) -> float:
    matches = [
        v for k, v in samples.items() if k[0] == metric and labels.items() <= dict(k[1]).items()
    ]
    assert len(matches) == 1, (metric, labels, matches)
    return matches[0]


def refreshed(samples: Samples, n_cas: int) -> bool:
    ok = [v for k, v in samples.items() if k[0] == "intune_cloudpki_refresh_success"]
    return len(ok) == n_cas and all(v == 1 for v in ok)


def assert_exact(sim: Any, samples: Samples, names: dict[str, str]) -> None:
    want = expected(sim, names)
    got = certificate_samples(samples)
    missing = {k: v for k, v in want.items() if k not in got}
    extra = {k: v for k, v in got.items() if k not in want}
    wrong = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
    assert not missing and not extra and not wrong, (
        f"missing={missing}\nextra={extra}\nwrong={wrong}"
    )
    # _days is derived at scrape time from the frozen clock: exact as well.
    for key, ts in got.items():
        if key[0] == "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds":
            days = samples[("intune_cloudpki_leaf_certificate_earliest_expiry_days", key[1])]
            assert days == (ts - ANCHOR.timestamp()) / 86400.0


def secret_env(sim: Any, names: list[str]) -> dict[str, str]:
    return {
        f"SECRET_{name.upper()}": t.client_secret
        for name, t in zip(names, sim.tenants, strict=False)
    }


def test_client_secret_every_certificate_metric_is_exact(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=7, tenants=1, cas=3, certificates=2500)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    samples = exporter.wait_for(lambda s: refreshed(s, 3), what="three CAs refreshed")
    assert_exact(sim, samples, {sim.tenants[0].tenant_id: "contoso"})
    assert samples[("intune_cloudpki_tenant_up", (("tenant", "contoso"),))] == 1
    assert value(samples, "intune_cloudpki_exporter_build_info") == 1
    # Failures are pre-initialised at 0 for every reason so that rate() works from the start.
    reasons = {d["reason"] for d in labels_of(samples, "intune_cloudpki_refresh_failures_total")}
    assert reasons == {
        "auth",
        "throttled",
        "http_4xx",
        "http_5xx",
        "timeout",
        "network",
        "invalid_response",
    }
    assert (
        value(
            samples,
            "intune_cloudpki_refresh_last_success_timestamp_seconds",
            ca_id=sim.tenants[0].cas[0].id,
        )
        == ANCHOR.timestamp()
    )
    # The requests carry the headers Graph asks for.
    graph = [e for e in sim.log if "/beta/" in e.path]
    assert graph and all(e.user_agent.startswith("pki-exporter/") for e in graph)
    assert all("include-unknown-enum-members" in (e.prefer or "") for e in graph)
    assert all(e.client_request_id for e in graph)
    assert len({e.client_request_id for e in graph}) == len(graph)


def test_certificate_credential(start_simulator: Any, start_exporter: Any, tmp_path: Path) -> None:
    sim = start_simulator(seed=11, tenants=1, cas=2, certificates=500)
    tenant = sim.tenants[0]
    entry = tenant_config(
        sim,
        tenant,
        "certs",
        credential={
            "certificate": {
                "private_key_file": str(tenant.key_file),
                "certificate_file": str(tenant.cert_file),
            }
        },
    )
    cfg = write_config(tmp_path / "config.yaml", [entry])
    exporter = start_exporter("--config.file", str(cfg))
    samples = exporter.wait_for(lambda s: refreshed(s, 2))
    assert_exact(sim, samples, {tenant.tenant_id: "certs"})


def test_workload_identity_token_file_is_reread(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=12, tenants=1, cas=1, certificates=300, token_lifetime=1)
    tenant = sim.tenants[0]
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(sim.issue_federated_token(tenant.tenant_id))
    entry = tenant_config(
        sim, tenant, "wi", credential={"workload_identity": {"token_file": str(token_file)}}
    )
    cfg = write_config(tmp_path / "config.yaml", [entry])
    exporter = start_exporter("--config.file", str(cfg))
    samples = exporter.wait_for(lambda s: refreshed(s, 1))
    assert_exact(sim, samples, {tenant.tenant_id: "wi"})
    # Rotate the projected token: the next token request must present the new one.
    token_file.write_text("not-a-valid-federated-token")
    exporter.wait_for(
        lambda s: value(s, "intune_cloudpki_tenant_up", tenant="wi") == 0,
        what="tenant down after bad token",
    )
    token_file.write_text(sim.issue_federated_token(tenant.tenant_id))
    exporter.wait_for(
        lambda s: value(s, "intune_cloudpki_tenant_up", tenant="wi") == 1, what="tenant up again"
    )


def test_two_tenants_at_once(start_simulator: Any, start_exporter: Any, tmp_path: Path) -> None:
    sim = start_simulator(seed=3, tenants=2, cas=2, certificates=800)
    names = ["alpha", "beta"]
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, t, n) for t, n in zip(sim.tenants, names, strict=True)],
    )
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, names))
    samples = exporter.wait_for(lambda s: refreshed(s, 4))
    assert_exact(sim, samples, {t.tenant_id: n for t, n in zip(sim.tenants, names, strict=True)})
    assert {d["tenant"] for d in labels_of(samples, "intune_cloudpki_tenant_up")} == set(names)


def test_configured_ca_list_with_name_override(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=5, tenants=1, cas=3, certificates=200)
    tenant = sim.tenants[0]
    chosen = tenant.cas[1]
    entry = tenant_config(
        sim,
        tenant,
        "contoso",
        certification_authorities=[{"id": chosen.id, "name": "Issuing CA (EU)"}],
    )
    cfg = write_config(tmp_path / "config.yaml", [entry])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    samples = exporter.wait_for(lambda s: refreshed(s, 1))
    want = {
        (name, tuple(sorted({**dict(labels), "ca": "Issuing CA (EU)"}.items()))): v
        for (name, labels), v in expected(sim, {tenant.tenant_id: "contoso"}).items()
        if dict(labels)["ca_id"] == chosen.id
    }
    assert certificate_samples(samples) == want
    # Only the configured CA was asked for: no discovery request went out.
    assert not [e for e in sim.log if e.path.rstrip("/").endswith("/cloudCertificationAuthority")]


def test_ca_removed_between_cycles_stops_being_exported(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=9, tenants=1, cas=3, certificates=300)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    exporter.wait_for(lambda s: refreshed(s, 3))
    gone = sim.tenants[0].cas[2].id
    sim.faults.add(Fault(kind="ca_gone", ca_id=gone))
    samples = exporter.wait_for(
        lambda s: not [k for k in s if dict(k[1]).get("ca_id") == gone] and refreshed(s, 2),
        what="CA gone from /metrics",
    )
    assert_exact(sim, samples, {sim.tenants[0].tenant_id: "contoso"})


def test_irregular_pages_with_an_empty_page(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from dataclasses import replace

    from pki_simulator import generate_spec

    spec = generate_spec(seed=21, anchor=ANCHOR, tenants=1, cas=1, certificates=1000)
    tenant = spec.tenants[0]
    irregular = replace(tenant.cas[0], page_sizes=(1, 0, 500, 3, 0, 496))
    spec = replace(spec, tenants=(replace(tenant, cas=(irregular,)),))
    sim = start_simulator(spec=spec)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    samples = exporter.wait_for(lambda s: refreshed(s, 1))
    assert_exact(sim, samples, {sim.tenants[0].tenant_id: "contoso"})
    total = sum(v for k, v in samples.items() if k[0] == "intune_cloudpki_leaf_certificates")
    invalid = value(samples, "intune_cloudpki_leaf_certificates_invalid")
    assert total + invalid == 1000


def test_429_is_honoured(start_simulator: Any, start_exporter: Any, tmp_path: Path) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=4, tenants=1, cas=1, certificates=300)
    ca = sim.tenants[0].cas[0]
    sim.faults.add(Fault(kind="throttle", ca_id=ca.id, page=0, times=2, retry_after=1))
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, sim.tenants[0], "contoso")],
        refresh={"interval": "1h", "timeout": "5s", "concurrency": 2},
    )
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    samples = exporter.wait_for(lambda s: refreshed(s, 1))
    assert_exact(sim, samples, {sim.tenants[0].tenant_id: "contoso"})
    leaf_requests = [e for e in sim.log if e.ca_id == ca.id and e.page == 0 and "getAll" in e.path]
    assert [e.status for e in leaf_requests] == [429, 429, 200]
    gaps = [b.time - a.time for a, b in itertools.pairwise(leaf_requests)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1 was waited for
    assert value(samples, "intune_cloudpki_graph_requests_total", code="429") == 2
    assert value(samples, "intune_cloudpki_refresh_failures_total", reason="throttled") == 0


def test_page_failure_keeps_the_previous_snapshot(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=8, tenants=1, cas=2, certificates=3000, page_size=500)
    names = {sim.tenants[0].tenant_id: "contoso"}
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    first = exporter.wait_for(lambda s: refreshed(s, 2))
    broken = sim.tenants[0].cas[0].id
    fault = sim.faults.add(Fault(kind="page_error", ca_id=broken, page=4))
    samples = exporter.wait_for(
        lambda s: (
            value(s, "intune_cloudpki_refresh_success", ca_id=broken) == 0
            and value(s, "intune_cloudpki_refresh_failures_total", ca_id=broken, reason="http_5xx")
            >= 1
        ),
        what="failure recorded",
    )
    # The failing CA keeps its last good numbers, the other CA keeps refreshing.
    assert certificate_samples(samples) == certificate_samples(first)
    assert_exact(sim, samples, names)
    assert (
        value(samples, "intune_cloudpki_refresh_last_success_timestamp_seconds", ca_id=broken)
        == ANCHOR.timestamp()
    )
    assert value(samples, "intune_cloudpki_refresh_success", ca_id=sim.tenants[0].cas[1].id) == 1
    sim.faults.remove(fault)
    exporter.wait_for(
        lambda s: value(s, "intune_cloudpki_refresh_success", ca_id=broken) == 1, what="recovery"
    )
    page = exporter.get("/").text
    assert "contoso" in page


def test_foreign_next_link_is_refused(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=6, tenants=1, cas=1, certificates=2000, page_size=500)
    ca = sim.tenants[0].cas[0]
    sim.faults.add(Fault(kind="foreign_next_link", ca_id=ca.id))
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    samples = exporter.wait_for(
        lambda s: value(s, "intune_cloudpki_refresh_failures_total", reason="invalid_response") >= 1
    )
    assert value(samples, "intune_cloudpki_refresh_success") == 0
    assert not [k for k in samples if k[0] == "intune_cloudpki_leaf_certificates"]
    assert "refused @odata.nextLink" in exporter.log()


def test_ready_only_after_the_first_refresh(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=2, tenants=1, cas=1, certificates=100)
    fault = sim.faults.add(Fault(kind="slow", delay=30.0))
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, sim.tenants[0], "contoso")],
        refresh={"interval": "1s", "timeout": "60s", "concurrency": 1},
    )
    exporter = start_exporter(
        "--config.file", str(cfg), env=secret_env(sim, ["contoso"]), wait_ready=False
    )
    response = exporter.get("/ready")
    assert response.status_code == 503
    assert exporter.get("/healthz").status_code == 200
    sim.faults.remove(fault)
    exporter.wait_http("/ready", timeout=60)


def test_once_prints_exposition_and_writes_file_atomically(
    start_simulator: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=13, tenants=1, cas=2, certificates=400)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    env = base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, **secret_env(sim, ["contoso"]))
    run = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--config.file", str(cfg), "--once"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr.decode()
    samples = parse_samples(run.stdout.decode())
    assert_exact(sim, samples, {sim.tenants[0].tenant_id: "contoso"})
    assert not [k for k in samples if k[0].startswith("process_")]
    out = tmp_path / "textfile" / "pki.prom"
    out.parent.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pki_exporter",
            "--config.file",
            str(cfg),
            "--once",
            "--output",
            str(out),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout == b""
    durations = "intune_cloudpki_refresh_duration_seconds"
    written = parse_samples(out.read_text())
    assert {k: v for k, v in written.items() if k[0] != durations} == {
        k: v for k, v in samples.items() if k[0] != durations
    }
    assert [p.name for p in out.parent.iterdir()] == ["pki.prom"]  # no temp file left behind
    # A failing CA makes --once exit non-zero, still writing what it has.
    from pki_simulator import Fault

    sim.faults.add(Fault(kind="page_error", ca_id=sim.tenants[0].cas[0].id, page=0))
    run = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--config.file", str(cfg), "--once"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 1
    failed = parse_samples(run.stdout.decode())
    assert value(failed, "intune_cloudpki_refresh_success", ca_id=sim.tenants[0].cas[0].id) == 0
    assert "Traceback" not in run.stderr.decode()


def test_config_check_verdicts(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    {
                        "name": "contoso",
                        "tenant_id": "00000000-0000-0000-0000-000000000000",
                        "client_id": "11111111-1111-1111-1111-111111111111",
                        "credential": {"client_secret_env": "PKI_TEST_SECRET"},
                    }
                ]
            }
        )
    )
    cmd = [sys.executable, "-m", "pki_exporter", "--config.check", "--config.file"]
    ok = subprocess.run(
        [*cmd, str(good)],
        env=base_env(PKI_TEST_SECRET="x" * 20),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("OK (1 tenant, 1 with CA discovery, refresh every 300s)")
    unset = subprocess.run(
        [*cmd, str(good)], env=base_env(), capture_output=True, text=True, timeout=60
    )
    assert unset.returncode == 1
    assert "PKI_TEST_SECRET" in unset.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("11111111-1111-1111-1111-111111111111", "not-a-guid"))
    broken = subprocess.run(
        [*cmd, str(bad)],
        env=base_env(PKI_TEST_SECRET="x" * 20),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert broken.returncode == 1
    assert broken.stdout.splitlines() == [
        f"error: {bad}: tenants[0].client_id: not a GUID",
        f"{bad}: FAILED (1 problem)",
    ]
    assert broken.stderr == ""
    missing = subprocess.run(
        [*cmd, str(tmp_path / "nope.yaml")],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert missing.stdout.splitlines() == [
        f"error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory "
        "(write one from config.example.yaml, or try --demo)",
        f"{tmp_path / 'nope.yaml'}: FAILED (1 problem)",
    ]


def test_no_secret_or_token_in_logs_pages_or_metrics(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    from pki_simulator import Fault

    sim = start_simulator(seed=14, tenants=1, cas=2, certificates=200)
    tenant = sim.tenants[0]
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, tenant, "contoso")])
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    exporter.wait_for(lambda s: refreshed(s, 2))
    sim.faults.add(Fault(kind="token_expiry", times=1))
    sim.faults.add(Fault(kind="page_error", ca_id=tenant.cas[0].id, page=0))
    exporter.wait_for(
        lambda s: value(s, "intune_cloudpki_refresh_success", ca_id=tenant.cas[0].id) == 0
    )
    texts = [
        exporter.get("/metrics").text,
        exporter.get("/").text,
        exporter.get("/ready").text,
        exporter.stop(),
    ]
    tokens = sim.issued_tokens()
    assert tokens
    for text in texts:
        assert tenant.client_secret not in text
        for token in tokens:
            assert token not in text


def test_bad_flags_and_port_in_use_are_one_line_errors(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pki_exporter"]
    run = subprocess.run(
        [*cmd, "--web.listen-address", "nonsense"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert run.stderr.strip().startswith("pki-exporter: ")
    assert "Traceback" not in run.stderr
    version = subprocess.run(
        [*cmd, "--version"], env=base_env(), capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("pki-exporter, version ")


def test_demo_serves_real_metrics(start_exporter: Any) -> None:
    exporter = start_exporter("--demo")

    def crls_read(samples: Samples) -> bool:
        ok = [v for k, v in samples.items() if k[0] == "intune_cloudpki_crl_fetch_success"]
        return refreshed(samples, 4) and len(ok) == 5 and all(ok)

    samples = exporter.wait_for(crls_read, timeout=60, what="demo refreshed, CRLs read")
    assert sum(v for k, v in samples.items() if k[0] == "intune_cloudpki_leaf_certificates") > 0
    # one healthy CRL after another, and one fault: the second CA's CRL misses 3 revocations
    unpublished = sorted(
        v
        for k, v in samples.items()
        if k[0] == "intune_cloudpki_leaf_certificates_revoked_unpublished"
    )
    assert unpublished == [0, 0, 0, 3]
    status = exporter.get("/")
    assert status.status_code == 200 and "demo" in status.text
    assert httpx.get(exporter.url + "/nope").status_code == 404


@pytest.mark.parametrize("interval", ["0"])
def test_interval_zero_refreshes_on_scrape(
    start_simulator: Any, start_exporter: Any, tmp_path: Path, interval: str
) -> None:
    sim = start_simulator(seed=15, tenants=1, cas=1, certificates=100)
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, sim.tenants[0], "contoso")],
        refresh={"interval": 0, "timeout": "5s", "concurrency": 1},
    )
    exporter = start_exporter("--config.file", str(cfg), env=secret_env(sim, ["contoso"]))
    before = len([e for e in sim.log if "getAll" in e.path])
    exporter.scrape()
    exporter.scrape()
    after = len([e for e in sim.log if "getAll" in e.path])
    assert after - before == 2  # one refresh per scrape, one page each
