"""Revocation end to end: the exporter's real refresh and CRL reader against the simulator's
PKI over real HTTP (Graph over TLS, the CDN in plain HTTP), every CRL metric exact against
the simulator's ground truth: healthy CAs, a renewed CA with two CRLs, each CRL fault, the
last good values through a failed read, no credential on the CDN, the allow-list. One test
runs the exporter as a process, reading CRLs on its own schedule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pki_simulator import Fault, Simulator
from prometheus_client import generate_latest

from pki_exporter.app import Exporter
from pki_exporter.config.load import load_config
from pki_exporter.crl_reader import CRLReader
from pki_exporter.runtime import clock
from tests.conftest import ANCHOR
from tests.exporter_proc import Samples, parse_samples
from tests.simulator.helpers import ManualClock

NOW = ANCHOR.timestamp()
GRACE = 4 * 3600.0
MAX_SIZE = 100_000
CRL_NAMES = (
    "intune_cloudpki_crl_fetch_success",
    "intune_cloudpki_crl_last_update_timestamp_seconds",
    "intune_cloudpki_crl_next_update_timestamp_seconds",
    "intune_cloudpki_crl_revoked_certificates",
    "intune_cloudpki_crl_size_bytes",
    "intune_cloudpki_leaf_certificates_revoked_unpublished",
)
FAILURES = "intune_cloudpki_crl_fetch_failures_total"


@pytest.fixture(scope="module")
def pki() -> Iterator[Simulator]:
    """4 CAs x 400 certificates (the 4th renewed: two versions, two CRLs), quirks included."""
    sim = Simulator.generate(
        seed=19, cas=4, certificates=400, anchor=ANCHOR, clock=ManualClock(NOW)
    )
    sim.start()
    yield sim
    sim.close()


@pytest.fixture
def sim(pki: Simulator) -> Iterator[Simulator]:
    pki.faults.clear()
    pki.clear_cdn_log()
    clock.freeze(NOW)
    yield pki
    clock.freeze(None)
    pki.faults.clear()


def write_config(sim: Simulator, directory: Path, **crl: Any) -> Path:
    tenant = sim.tenants[0]
    secret = directory / "secret"
    secret.write_text(tenant.client_secret)
    secret.chmod(0o600)
    doc = {
        "refresh": {"interval": "1h", "timeout": "5s", "concurrency": 2},
        "expiry_windows_days": [7, 30, 90],
        "crl": {
            "interval": "1s",
            "timeout": "1s",
            "max_size": MAX_SIZE,
            "allowed_hosts": ["127.0.0.1"],
            **crl,
        },
        "tenants": [
            {
                "name": "contoso",
                "tenant_id": tenant.tenant_id,
                "client_id": tenant.client_id,
                "authority_host": sim.url,
                "graph_url": sim.url,
                "ca_bundle": str(sim.ca_bundle_path),
                "credential": {"client_secret_file": str(secret)},
                "certification_authorities": "all",
            }
        ],
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


class Run:
    """An exporter in this process: the real refresher for Graph, a CRL reader without
    backoff waits (the tries are the same, only not spread out)."""

    def __init__(self, sim: Simulator, directory: Path, **crl: Any) -> None:
        self.sim = sim
        self.config = load_config(str(write_config(sim, directory, **crl)))
        self.exporter = Exporter(self.config, process_metrics=False)
        self.reader = CRLReader(self.config, self.exporter.store, backoff=0.0)

    def refresh(self) -> None:
        self.exporter.refresher.refresh_all()

    def read(self) -> Samples:
        self.reader.read_all()
        return self.samples()

    def samples(self) -> Samples:
        return parse_samples(generate_latest(self.exporter.registry).decode())

    def close(self) -> None:
        self.reader.stop()
        self.exporter.refresher.stop()


@pytest.fixture
def run(sim: Simulator, tmp_path: Path) -> Iterator[Run]:
    running = Run(sim, tmp_path)
    running.refresh()
    yield running
    running.close()


def crl_samples(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in CRL_NAMES}


def truth(sim: Simulator, max_size: int = MAX_SIZE) -> Samples:
    want = sim.expected_crl_samples(
        NOW, grace=GRACE, max_size=max_size, tenant_names={sim.tenants[0].tenant_id: "contoso"}
    )
    return {(name, tuple(labels)): value for (name, labels), value in want.items()}


def assert_exact(got: Samples, want: Samples) -> None:
    missing = {k: v for k, v in want.items() if k not in got}
    extra = {k: v for k, v in got.items() if k not in want}
    wrong = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
    assert (missing, extra, wrong) == ({}, {}, {})


def failures(samples: Samples) -> dict[tuple[str, str], float]:
    """(url, reason) -> count, the non-zero ones."""
    out = {}
    for (name, labels), value in samples.items():
        if name == FAILURES and value:
            d = dict(labels)
            out[(d["url"], d["reason"])] = value
    return out


def url_of(sim: Simulator, ca_index: int, version: int | None = None) -> tuple[str, str]:
    """(CA id, CRL URL) of the ``ca_index``-th CA's current version, or of ``version``."""
    ca_id = sim.tenants[0].cas[ca_index].id
    for t in sim.expected_crls(NOW, max_size=MAX_SIZE):
        if (
            t.ca_id == ca_id
            and t.named
            and (t.current if version is None else t.version == version)
        ):
            return ca_id, t.url
    raise AssertionError(f"no CRL for CA {ca_index} version {version}")


# -- healthy -------------------------------------------------------------------------------


def test_every_crl_metric_is_exact_for_healthy_cas_and_the_renewed_one(
    sim: Simulator, run: Run
) -> None:
    samples = run.read()
    want = truth(sim)
    assert_exact(crl_samples(samples), want)
    urls = {dict(k[1])["url"] for k in want if k[0] == CRL_NAMES[0]}
    per_ca: dict[str, set[str]] = {}
    for key in want:
        labels = dict(key[1])
        if "url" in labels:
            per_ca.setdefault(labels["ca_id"], set()).add(labels["url"])
    assert sorted(len(v) for v in per_ca.values()) == [1, 1, 1, 2]  # the renewed CA: two
    assert len(urls) == 5
    assert failures(samples) == {}
    assert all(v == 0 for k, v in want.items() if k[0] == CRL_NAMES[-1])
    # The renewed CA's older CRL was checked against its own certificate, from the CDN.
    assert {e.kind for e in sim.cdn_log} == {"crl", "cacert"}


def test_a_second_read_is_conditional_and_changes_nothing(sim: Simulator, run: Run) -> None:
    first = run.read()
    sim.clear_cdn_log()
    second = run.read()
    assert crl_samples(second) == crl_samples(first)
    statuses = sorted(e.status for e in sim.cdn_log if e.kind == "crl")
    assert statuses == [304] * 5
    assert all(e.header("If-None-Match") for e in sim.cdn_log if e.kind == "crl")


# -- faults --------------------------------------------------------------------------------

FAULTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("crl_stale", {}, None),
    ("crl_stale", {"next_update_in": 3 * 86400}, None),  # inside 3.5 days: a missed publication
    ("crl_missing", {"count": 3}, None),
    ("crl_foreign_key", {}, "signature"),
    ("crl_foreign_issuer", {}, "signature"),
    ("crl_error", {"status": 404}, "http_4xx"),
    ("crl_error", {"status": 500}, "http_5xx"),
    ("crl_hang", {"delay": 4}, "timeout"),
    ("crl_reset", {}, "network"),
    ("crl_oversize", {"size": 2 * MAX_SIZE}, "too_large"),
    ("crl_garbage", {}, "invalid"),
    ("crl_pem", {}, None),
]


@pytest.mark.parametrize(
    ("kind", "fields", "reason"),
    FAULTS,
    ids=[f"{k}-{'-'.join(map(str, f.values())) or 'default'}" for k, f, _ in FAULTS],
)
@pytest.mark.parametrize("target", ["current", "renewed-v1"])
def test_each_fault_is_exact_and_a_failure_keeps_the_last_good_values(
    sim: Simulator, run: Run, kind: str, fields: dict[str, Any], reason: str | None, target: str
) -> None:
    ca_id, url = url_of(sim, 1) if target == "current" else url_of(sim, 3, version=1)
    version = 1 if target == "renewed-v1" else None
    fault = Fault(kind=kind, ca_id=ca_id, version=version, **fields)
    # A reset comes in the middle of a body: after a good read, the exporter's conditional
    # request gets a 304 with no body to cut (the simulator resets 200s only), so this
    # fault is on from the first read, and the CRL has no good values to keep.
    never_good = kind == "crl_reset"
    if never_good:
        sim.faults.add(fault)
    healthy = crl_samples(run.read())
    if not never_good:
        sim.faults.add(fault)
    samples = run.read()
    want = truth(sim)
    labels = next(dict(k[1]) for k in want if k[0] == CRL_NAMES[0] and dict(k[1])["url"] == url)
    key = tuple(sorted(labels.items()))
    if never_good:  # the truth's rule: no gauges for a CRL never read successfully
        want = {k: v for k, v in want.items() if k[1] != key or k[0] == CRL_NAMES[0]}
        assert failures(samples) == {(url, reason): 2.0}
        assert_exact(crl_samples(samples), want)
        return
    assert_exact(crl_samples(samples), want)
    if reason is None:
        assert want[(CRL_NAMES[0], key)] == 1
        assert failures(samples) == {}
    else:
        assert want[(CRL_NAMES[0], key)] == 0
        assert failures(samples) == {(url, reason): 1.0}
        # the gauges of the failed CRL are those of its last good read
        for name in CRL_NAMES[1:-1]:
            assert samples[(name, key)] == healthy[(name, key)], name
    if kind in ("crl_missing", "crl_stale") and fields.get("next_update_in") is None:
        unpublished = {
            k: v
            for k, v in samples.items()
            if k[0] == CRL_NAMES[-1] and dict(k[1])["ca_id"] == ca_id
        }
        assert sum(unpublished.values()) > 0  # proven exact against the truth above


def test_the_drill_down_lists_exactly_the_unpublished_revocations(sim: Simulator, run: Run) -> None:
    from pki_exporter.web.drilldown import certificates_page

    ca_id, url = url_of(sim, 0)
    sim.faults.add(Fault(kind="crl_missing", ca_id=ca_id, count=4))
    run.read()
    answer = certificates_page(
        run.exporter.store, f"ca={ca_id}&view=unpublished&format=json", (7, 30, 90), mode="devices"
    )
    import json

    rows = json.loads(answer.body)["rows"]
    want = sim.expected_unpublished(NOW, ca_id, grace=GRACE, max_size=MAX_SIZE)
    assert len(want) == 4
    assert [
        (
            int(r["serial_number"], 16),
            r["thumbprint"],
            r["device_id"],
            r["revoked_at_timestamp"],
            r["crl_url"],
        )
        for r in rows
    ] == [
        (
            int(str(w["serial_number"]), 16),
            str(w["thumbprint"]).upper() if w["thumbprint"] else None,
            w["device_id"],
            w["revoked_timestamp"],
            w["crl_url"],
        )
        for w in want
    ]
    assert all(r["crl_url"] == url for r in rows)


# -- what the CDN sees -----------------------------------------------------------------------


def test_no_token_or_secret_ever_reaches_a_crl_host(sim: Simulator, run: Run) -> None:
    run.read()
    secret = sim.tenants[0].client_secret
    assert sim.cdn_log
    for entry in sim.cdn_log:
        names = {name.lower() for name, _ in entry.headers}
        assert "user-agent" in names  # the log holds every header
        assert not names & {"authorization", "cookie", "proxy-authorization"}, entry.path
        for _, value in entry.headers:
            # the simulator's access tokens are JWTs: a token anywhere would start so
            assert "Bearer" not in value and "eyJ" not in value
            assert secret not in value
    # Graph saw a token for every request; the CDN for none.
    assert all(e.had_authorization for e in sim.log if e.endpoint == "graph")


def test_a_host_outside_the_allow_list_is_not_contacted(sim: Simulator, tmp_path: Path) -> None:
    running = Run(sim, tmp_path, allowed_hosts=["*.pki.azure.net"])
    try:
        running.refresh()
        samples = running.read()
        assert sim.cdn_log == []
        urls = {dict(k[1])["url"] for k in truth(sim) if k[0] == CRL_NAMES[0]}
        assert failures(samples) == {(url, "refused"): 1.0 for url in urls}
        ok = [v for k, v in samples.items() if k[0] == CRL_NAMES[0]]
        assert ok == [0.0] * 5
        assert [k for k in samples if k[0] in CRL_NAMES[1:-1]] == []
    finally:
        running.close()


# -- the exporter as a process: CRLs on their own schedule ------------------------------------


def test_the_exporter_reads_crls_on_their_own_interval(
    sim: Simulator, start_exporter: Any, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    exporter = start_exporter("--config.file", str(config))

    def all_read(samples: Samples) -> bool:
        ok = [v for k, v in samples.items() if k[0] == CRL_NAMES[0]]
        return len(ok) == 5 and all(ok)

    exporter.wait_for(all_read, timeout=60, what="every CRL read")
    graph_requests = len([e for e in sim.log if e.endpoint == "graph"])
    ca_id, url = url_of(sim, 2)
    sim.faults.add(Fault(kind="crl_error", ca_id=ca_id, status=503))

    def failed(samples: Samples) -> bool:
        return failures(samples).get((url, "http_5xx"), 0) >= 1

    samples = exporter.wait_for(failed, timeout=60, what="the CRL read failing")
    want = truth(sim)
    assert_exact(crl_samples(samples), want)  # fetch_success 0, the last good values kept
    # Re-read on the CRL interval (1 s) while the Graph refresh (1 h) did not run again.
    assert len([e for e in sim.log if e.endpoint == "graph"]) == graph_requests
    sim.faults.clear()
    exporter.wait_for(all_read, timeout=60, what="the CRL read again")


# -- --once and warm restart -----------------------------------------------------------------


def test_once_reads_the_crls_after_the_leaves_and_prints_them(
    sim: Simulator, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.conftest import FAKE_NOW
    from tests.exporter_proc import base_env

    sim.faults.add(Fault(kind="crl_missing", ca_id=sim.tenants[0].cas[0].id, count=2))
    config = write_config(sim, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--once", "--config.file", str(config)],
        env=base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert_exact(crl_samples(parse_samples(done.stdout)), truth(sim))
    assert sorted(v for k, v in parse_samples(done.stdout).items() if k[0] == CRL_NAMES[-1]) == [
        0,
        0,
        0,
        2,
    ]


def test_a_warm_restart_checks_crls_before_its_first_refresh(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.faults.add(Fault(kind="crl_missing", ca_id=sim.tenants[0].cas[2].id, count=1))
    config = load_config(str(write_config(sim, tmp_path)))
    storage = tmp_path / "storage"
    first = Exporter(config, process_metrics=False, storage_path=str(storage))
    first.refresher.refresh_all()
    first.refresher.stop()
    graph = len([e for e in sim.log if e.endpoint == "graph"])
    second = Exporter(config, process_metrics=False, storage_path=str(storage))
    reader = CRLReader(config, second.store, backoff=0.0)
    try:
        reader.read_all()  # no refresh: the restored snapshots name the CRLs
        samples = parse_samples(generate_latest(second.registry).decode())
        assert len([e for e in sim.log if e.endpoint == "graph"]) == graph
        assert_exact(crl_samples(samples), truth(sim))
        assert sum(v for k, v in samples.items() if k[0] == CRL_NAMES[-1]) == 1
    finally:
        reader.stop()
        second.refresher.stop()


def test_with_crl_checks_off_nothing_is_read_or_exported(sim: Simulator, tmp_path: Path) -> None:
    running = Run(sim, tmp_path, enabled=False)
    try:
        running.refresh()
        samples = running.read()
        assert sim.cdn_log == []
        assert [k for k in samples if k[0] in (*CRL_NAMES, FAILURES)] == []
        assert "crl_" not in generate_latest(running.exporter.registry).decode()
        ca = next(iter(running.exporter.store.tenants["contoso"].cas.values()))
        assert ca.snapshot is not None and len(ca.snapshot.revocations) == 0
    finally:
        running.close()
