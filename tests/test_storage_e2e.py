"""Warm restart (``--storage.path``) end to end: real exporter processes, the simulator,
exact values. A first exporter reads the tenant and writes its snapshots; a second one,
started with a later frozen clock while the simulator holds every Graph request, must
serve the first one's numbers and timestamps at once, then the fresh ones."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pki_simulator import Fault

from pki_exporter.runtime.sharding import shard_of
from pki_exporter.storage import FORMAT_VERSION, decode, file_name
from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import (
    WINDOWS,
    ExporterProcess,
    Samples,
    base_env,
    certificate_samples,
    tenant_config,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

LATER = ANCHOR + timedelta(days=1)
RESTORED = "intune_cloudpki_snapshot_restored"
LAST_SUCCESS = "intune_cloudpki_refresh_last_success_timestamp_seconds"
WRITE_FAILURES = "intune_cloudpki_storage_write_failures_total"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start exporters with a chosen frozen "now" (the conftest fixture has one only)."""
    started: list[ExporterProcess] = []

    def start(
        *args: str,
        env: dict[str, str],
        now: str = FAKE_NOW,
        wait_ready: bool = True,
        wrapper: list[str] | None = None,
    ) -> ExporterProcess:
        proc = ExporterProcess(
            args=[*args, "--web.listen-address", "127.0.0.1:0", "--log.level", "debug"],
            env=base_env(PKI_EXPORTER_FAKE_NOW=now, **env),
            cwd=tmp_path,
            wrapper=wrapper or [],
        )
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in started:
        proc.stop()


def read_only_mount(directory: Path) -> list[str] | None:
    """A wrapper that runs a command with ``directory`` bind-mounted read-only in a mount
    namespace of its own (root only: permission bits do not stop root)."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "mount")):
        return None
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return None
    d = shlex.quote(str(directory))
    script = (
        f"set -e; mount --make-rprivate /; mount --bind {d} {d}; "
        f'mount -o remount,bind,ro {d}; exec "$@"'
    )
    return ["unshare", "--mount", "sh", "-c", script, "sh"]


def by_ca(samples: Samples, metric: str) -> dict[str, float]:
    return {dict(k[1])["ca_id"]: v for k, v in samples.items() if k[0] == metric}


def truth(sim: Any, now: Any) -> Samples:
    names = {t.tenant_id: t.name for t in sim.tenants}
    return certificate_samples(
        dict(sim.expected_samples(now=now, windows=WINDOWS, tenant_names=names))
    )


def setup(
    start_simulator: Callable[..., Any], tmp_path: Path, *, cas: int = 2, seed: int = 5
) -> tuple[Any, Path, dict[str, str], list[str]]:
    sim = start_simulator(
        seed=seed, tenants=2, cas=cas, certificates=300, page_size=100, anchor=ANCHOR
    )
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, t, t.name) for t in sim.tenants],
        refresh={"interval": "1s", "timeout": "10s", "concurrency": 8},
    )
    env = {f"SECRET_{t.name.upper()}": t.client_secret for t in sim.tenants}
    ca_ids = [ca.id for t in sim.tenants for ca in t.cas]
    return sim, cfg, env, ca_ids


def fresh(ca_ids: list[str]) -> Callable[[Samples], bool]:
    """Every CA served from a refresh of this process."""
    return lambda s: by_ca(s, RESTORED) == dict.fromkeys(ca_ids, 0.0)


def test_restart_serves_the_last_snapshot_at_once_until_a_refresh_replaces_it(
    start_simulator: Any, run: Any, tmp_path: Path
) -> None:
    sim, cfg, env, ca_ids = setup(start_simulator, tmp_path)
    state = tmp_path / "state"
    first = run("--config.file", str(cfg), "--storage.path", str(state), env=env)
    before = first.wait_for(fresh(ca_ids), what="every CA refreshed")
    assert certificate_samples(before) == truth(sim, ANCHOR)
    drilldown = {
        ca: first.get(f"/certificates?ca={ca}&within_days=90&format=json").json() for ca in ca_ids
    }
    assert any(rows for rows in drilldown.values())
    first.stop()

    # What is on disk: one private file per CA, nothing secret.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = sorted(state.iterdir())
    assert [f.name for f in files] == sorted(
        file_name(t.name, ca.id) for t in sim.tenants for ca in t.cas
    )
    secrets = [t.client_secret for t in sim.tenants] + sim.issued_tokens()
    assert len(secrets) >= 4
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        data = file.read_bytes()
        assert decode(data).snapshot.read_at == ANCHOR.timestamp()
        for secret in secrets:
            assert secret.encode() not in data, f"{file.name} holds a secret or token"

    # Restart a day later while Graph answers nothing for seconds.
    slow = sim.faults.add(Fault(kind="slow", delay=4.0))
    second = run(
        "--config.file", str(cfg), "--storage.path", str(state),
        env=env, now=LATER.isoformat(), wait_ready=False,
    )  # fmt: skip
    second.wait_http("/ready", timeout=5)  # long before a refresh could end
    samples = second.scrape()
    assert by_ca(samples, RESTORED) == dict.fromkeys(ca_ids, 1.0)
    assert certificate_samples(samples) == certificate_samples(before)
    assert by_ca(samples, LAST_SUCCESS) == dict.fromkeys(ca_ids, ANCHOR.timestamp())
    assert by_ca(samples, "intune_cloudpki_refresh_success") == dict.fromkeys(ca_ids, 1.0)
    for ca in ca_ids:
        page = second.get(f"/certificates?ca={ca}&within_days=90&format=json")
        assert page.json() == drilldown[ca]
    assert samples[(WRITE_FAILURES, ())] == 0

    # The first refresh replaces every restored snapshot, and the files with it.
    sim.faults.remove(slow)
    after = second.wait_for(fresh(ca_ids), timeout=60, what="fresh snapshots")
    assert certificate_samples(after) == truth(sim, LATER)
    assert certificate_samples(after) != certificate_samples(before)
    assert by_ca(after, LAST_SUCCESS) == dict.fromkeys(ca_ids, LATER.timestamp())
    # A snapshot's file is written after the snapshot is served: read them once stopped.
    log = second.stop()
    for file in files:
        assert decode(file.read_bytes()).snapshot.read_at == LATER.timestamp()
    assert log.count('msg="snapshot restored"') == len(ca_ids)
    for secret in secrets + sim.issued_tokens():
        for file in state.iterdir():
            assert secret.encode() not in file.read_bytes()


def test_unusable_and_stale_files_are_ignored_or_deleted(
    start_simulator: Any, run: Any, tmp_path: Path
) -> None:
    sim, cfg, env, ca_ids = setup(start_simulator, tmp_path, cas=3, seed=6)
    state = tmp_path / "state"
    first = run("--config.file", str(cfg), "--storage.path", str(state), env=env)
    first.wait_for(fresh(ca_ids), what="every CA refreshed")
    first.stop()

    (t0, t1) = sim.tenants
    path = {ca.id: state / file_name(t.name, ca.id) for t in sim.tenants for ca in t.cas}
    corrupt, truncated, good0 = (ca.id for ca in t0.cas)
    foreign, good1, removed = (ca.id for ca in t1.cas)
    data = path[corrupt].read_bytes()
    path[corrupt].write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    path[truncated].write_bytes(path[truncated].read_bytes()[:100])
    data = path[foreign].read_bytes()
    path[foreign].write_bytes(data[:8] + (FORMAT_VERSION + 1).to_bytes(2, "big") + data[10:])
    gone_tenant = state / file_name("no-longer-configured", good1)
    gone_tenant.write_bytes(path[good1].read_bytes())
    sim.remove_ca(removed)

    slow = sim.faults.add(Fault(kind="slow", delay=3.0))
    second = run(
        "--config.file", str(cfg), "--storage.path", str(state),
        env=env, now=LATER.isoformat(), wait_ready=False,
    )  # fmt: skip
    second.wait_http("/ready", timeout=5)  # each tenant has a restored CA
    samples = second.scrape()
    assert by_ca(samples, RESTORED) == {good0: 1.0, good1: 1.0, removed: 1.0}
    assert not gone_tenant.exists()

    sim.faults.remove(slow)
    live = [ca for ca in ca_ids if ca != removed]
    after = second.wait_for(fresh(live), timeout=60, what="fresh snapshots, removed CA gone")
    assert certificate_samples(after) == truth(sim, LATER)
    log = second.stop()  # first: a refresh a second rewrites the files (through temporary ones)
    assert sorted(state.iterdir()) == sorted(path[ca] for ca in live)
    for ca in live:  # rewritten whole
        assert decode(path[ca].read_bytes()).snapshot.read_at == LATER.timestamp()
    ignored = [line for line in log.splitlines() if 'msg="snapshot file ignored"' in line]
    assert len(ignored) == 3, log
    for ca, why in ((corrupt, "checksum"), (truncated, "truncated"), (foreign, "format version")):
        (line,) = [line for line in ignored if path[ca].name in line]
        assert why in line
    deleted = [line for line in log.splitlines() if 'msg="stale snapshot file deleted"' in line]
    assert len(deleted) == 2, log
    assert gone_tenant.name in deleted[0] and "tenant no longer configured" in deleted[0]
    assert path[removed].name in deleted[1] and "no longer listed" in deleted[1]
    assert "Traceback" not in log


def test_a_read_only_directory_does_not_stop_the_exporter(
    start_simulator: Any, run: Any, tmp_path: Path
) -> None:
    sim, cfg, env, ca_ids = setup(start_simulator, tmp_path, seed=7)
    state = tmp_path / "state"
    first = run("--config.file", str(cfg), "--storage.path", str(state), env=env)
    first.wait_for(fresh(ca_ids), what="every CA refreshed")
    first.stop()
    written = {f.name: f.read_bytes() for f in state.iterdir()}
    assert len(written) == len(ca_ids)

    wrapper = read_only_mount(state)
    if wrapper is None and os.geteuid() != 0:
        state.chmod(0o500)
    elif wrapper is None:
        pytest.skip("root without a private mount namespace cannot make a read-only directory")
    slow = sim.faults.add(Fault(kind="slow", delay=2.0))
    second = run(
        "--config.file", str(cfg), "--storage.path", str(state),
        env=env, now=LATER.isoformat(), wait_ready=False, wrapper=wrapper,
    )  # fmt: skip
    second.wait_http("/ready", timeout=5)  # restored from the read-only directory
    assert by_ca(second.scrape(), RESTORED) == dict.fromkeys(ca_ids, 1.0)
    sim.faults.remove(slow)
    samples = second.wait_for(
        lambda s: fresh(ca_ids)(s) and s[(WRITE_FAILURES, ())] >= len(ca_ids),
        timeout=60,
        what="fresh snapshots served from memory, failed writes counted",
    )
    assert certificate_samples(samples) == truth(sim, LATER)
    assert second.get("/ready").status_code == 200
    log = second.stop()
    failed = [line for line in log.splitlines() if "snapshot write failed" in line]
    assert len(failed) >= len(ca_ids), log
    assert "Read-only file system" in failed[0] or "Permission denied" in failed[0]
    assert "Traceback" not in log
    assert {f.name: f.read_bytes() for f in state.iterdir()} == written  # untouched
    state.chmod(0o700)


def test_once_ignores_the_storage_path(start_simulator: Any, tmp_path: Path) -> None:
    _sim, cfg, env, _ = setup(start_simulator, tmp_path, seed=8)
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--config.file", str(cfg), "--once",
         "--storage.path", str(state)],
        env=base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, **env),
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"intune_cloudpki_leaf_certificates{" in result.stdout
    assert b"snapshot_restored" not in result.stdout
    assert not state.exists()


def test_storage_flag_in_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--help"], capture_output=True, check=True
    )
    assert b"--storage.path DIR" in result.stdout


def test_shards_sharing_a_directory_keep_each_others_files(
    start_simulator: Any, run: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=9, tenants=2, cas=1, certificates=100, anchor=ANCHOR)
    names = [f"tenant-{i}" for i in range(20)]
    name0 = next(n for n in names if shard_of(n, 2) == 0)
    name1 = next(n for n in names if shard_of(n, 2) == 1)
    t0, t1 = sim.tenants
    entries = [tenant_config(sim, t0, name0), tenant_config(sim, t1, name1)]
    cfg = write_config(tmp_path / "config.yaml", entries)
    env = {f"SECRET_{name0.upper().replace('-', '_')}": t0.client_secret}
    env[f"SECRET_{name1.upper().replace('-', '_')}"] = t1.client_secret
    state = tmp_path / "state"
    flags = ("--config.file", str(cfg), "--storage.path", str(state))
    shard0 = run(*flags, "--tenant-shard", "0/2", env=env)
    shard1 = run(*flags, "--tenant-shard", "1/2", env=env)
    shard0.wait_for(fresh([t0.cas[0].id]), what="shard 0 refreshed")
    shard1.wait_for(fresh([t1.cas[0].id]), what="shard 1 refreshed")
    shard0.stop()
    shard1.stop()
    files = {file_name(name0, t0.cas[0].id), file_name(name1, t1.cas[0].id)}
    assert {f.name for f in state.iterdir()} == files

    # Shard 0 restarts: it restores its own tenant and leaves shard 1's file alone.
    slow = sim.faults.add(Fault(kind="slow", delay=2.0))
    again = run(*flags, "--tenant-shard", "0/2", env=env, wait_ready=False)
    again.wait_http("/ready", timeout=5)
    assert by_ca(again.scrape(), RESTORED) == {t0.cas[0].id: 1.0}
    assert {f.name for f in state.iterdir()} == files
    again.stop()
    sim.faults.remove(slow)

    # Tenant 1 leaves the config: its file is stale for every shard.
    write_config(tmp_path / "config.yaml", entries[:1])
    alone = run(*flags, "--tenant-shard", "0/2", env=env)
    alone.wait_for(fresh([t0.cas[0].id]), what="shard 0 refreshed")
    log = alone.stop()  # first: a refresh a second rewrites the file (through a temporary one)
    assert {f.name for f in state.iterdir()} == {file_name(name0, t0.cas[0].id)}
    assert "tenant no longer configured" in log
