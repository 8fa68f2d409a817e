"""``--tenant-shard I/N``: N replicas share one config, each exports a stable, disjoint share.

The unit tests prove the assignment (disjoint, covering, independent of order, restarts,
other tenants and Python's hash seed; pinned values so that a rolling upgrade never sees
two versions disagree); the end-to-end tests run one exporter per shard against the
simulator and prove that together they export every tenant exactly once, with exact
numbers, and that a reload keeps the shard.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pki_exporter.config.load import parse_config
from pki_exporter.runtime.sharding import MAX_SHARDS, Shard, ShardError, parse_shard, shard_of
from tests.conftest import ANCHOR
from tests.exporter_proc import (
    CERT_METRICS,
    WINDOWS,
    Samples,
    base_env,
    tenant_config,
    write_config,
)


def config_text(names: list[str]) -> str:
    lines = ["tenants:"]
    for i, name in enumerate(names):
        lines += [
            f"  - name: {name}",
            f"    tenant_id: 0e5f4d3c-2b1a-4c9d-8e7f-{i:012d}",  # not the example's placeholders
            "    client_id: 7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "    credential: {client_secret_env: SECRET}",
        ]
    return "\n".join(lines) + "\n"


def names_of(count: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [f"customer-{rng.randrange(10**9):09d}" for _ in range(count)]


# --- the assignment -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 16])
def test_shares_are_disjoint_cover_every_tenant_and_ignore_order(count: int) -> None:
    names = names_of(300)
    config = parse_config(config_text(names))
    shares = [[t.name for t in Shard(i, count).select(config).tenants] for i in range(count)]
    flat = [name for share in shares for name in share]
    assert sorted(flat) == sorted(names)  # every tenant, each exactly once
    assert len(flat) == len(set(flat))
    # A shuffled config, or one with tenants added and removed, moves nobody else.
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    changed = shuffled[:250] + names_of(40, seed=9)
    for variant in (shuffled, changed):
        other = parse_config(config_text(variant))
        for i in range(count):
            kept = {t.name for t in Shard(i, count).select(other).tenants}
            assert kept == set(shares[i]) & set(variant) | {
                n for n in variant if n not in names and shard_of(n, count) == i
            }
    # Shares are even enough for a hash: 300 tenants over N shards within 40% of the mean.
    mean = len(names) / count
    assert all(abs(len(share) - mean) <= 0.4 * mean + 2 for share in shares), [
        len(s) for s in shares
    ]


def test_assignment_is_pinned_and_independent_of_the_hash_seed() -> None:
    # Replicas of different versions meet during a rolling upgrade: the function must never
    # change, or a tenant would be exported twice or not at all. These values are SHA-256.
    pinned = {("contoso", 3): 2, ("fabrikam", 3): 2, ("northwind", 3): 1, ("contoso", 7): 4}
    assert {key: shard_of(*key) for key in pinned} == pinned
    names = names_of(50)
    here = [shard_of(n, 7) for n in names]
    code = (
        "import json, sys; from pki_exporter.runtime.sharding import shard_of; "
        "print(json.dumps([shard_of(n, 7) for n in json.loads(sys.argv[1])]))"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(names)],
            env={**base_env(), "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == here


def test_empty_share_is_a_warning_not_an_error() -> None:
    config = parse_config(config_text(["contoso"]))
    owner = shard_of("contoso", 2)
    assert [t.name for t in Shard(owner, 2).select(config).tenants] == ["contoso"]
    empty = Shard(1 - owner, 2).select(config)
    assert empty.tenants == ()
    assert any("none of the 1 configured tenants" in w for w in empty.warnings)


@pytest.mark.parametrize(
    ("text", "env", "host", "want"),
    [
        ("0/1", {}, "x", Shard(0, 1)),
        ("2/3", {}, "x", Shard(2, 3)),
        (" 1/4 ", {}, "x", Shard(1, 4)),
        ("auto/3", {"POD_NAME": "pki-exporter-2"}, "ignored-0", Shard(2, 3)),
        ("auto/3", {}, "pki-exporter-1", Shard(1, 3)),
        ("auto/3", {"POD_NAME": ""}, "my-sts-0", Shard(0, 3)),
    ],
)
def test_parse_shard(text: str, env: dict[str, str], host: str, want: Shard) -> None:
    assert parse_shard(text, env, lambda: host) == want


@pytest.mark.parametrize(
    ("text", "env", "host", "message"),
    [
        ("3", {}, "x", "expected I/N or auto/N"),
        ("a/3", {}, "x", "expected I/N or auto/N"),
        ("-1/3", {}, "x", "expected I/N or auto/N"),
        ("3/3", {}, "x", "I must be below N"),
        ("0/0", {}, "x", "N must be between 1 and"),
        (f"0/{MAX_SHARDS + 1}", {}, "x", "N must be between 1 and"),
        ("auto/3", {"POD_NAME": "pki-exporter"}, "x", "cannot read a pod ordinal from POD_NAME"),
        ("auto/3", {}, "laptop", "cannot read a pod ordinal from the host name 'laptop'"),
        ("auto/3", {"POD_NAME": "pki-exporter-3"}, "x", "pod ordinal 3"),
    ],
)
def test_parse_shard_errors(text: str, env: dict[str, str], host: str, message: str) -> None:
    with pytest.raises(ShardError, match=message):
        parse_shard(text, env, lambda: host)


def test_cli_refuses_a_bad_shard_and_check_shows_the_share(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(["contoso", "fabrikam", "northwind"]))
    env = {**base_env(), "SECRET": "s"}
    run = [sys.executable, "-m", "pki_exporter", "--config.file", str(cfg)]
    bad = subprocess.run([*run, "--tenant-shard", "3/3"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "pki-exporter: --tenant-shard: 3/3: I must be below N (shards are numbered 0 to 2)"
    )
    auto = subprocess.run(
        [*run, "--tenant-shard", "auto/3"],
        env={**env, "POD_NAME": "pki-exporter"},
        capture_output=True,
        text=True,
    )
    assert auto.returncode == 1 and "cannot read a pod ordinal" in auto.stderr
    check = subprocess.run(
        [*run, "--config.check", "--tenant-shard", "2/3"], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines()[0] == "tenant shard 2/3: 2 of 3 tenants: contoso, fabrikam"
    empty = subprocess.run(
        [*run, "--config.check", "--tenant-shard", "0/3"], env=env, capture_output=True, text=True
    )
    assert empty.stdout.splitlines()[0] == "tenant shard 0/3: 0 of 3 tenants"


# --- one exporter per shard ---------------------------------------------------------------


def secret_env(sim: Any, label: dict[str, str]) -> dict[str, str]:
    """The variables `tenant_config` names (``SECRET_<NAME>``), one per tenant."""
    return {
        f"SECRET_{label[t.tenant_id].upper().replace('-', '_')}": t.client_secret
        for t in sim.tenants
    }


def tenant_labels(samples: Samples) -> set[str]:
    return {dict(k[1])["tenant"] for k in samples if "tenant" in dict(k[1])}


def refreshed(samples: Samples, n_cas: int) -> bool:
    ok = [v for k, v in samples.items() if k[0] == "intune_cloudpki_refresh_success"]
    return len(ok) == n_cas and all(v == 1 for v in ok)


def test_sharded_exporters_export_every_tenant_exactly_once(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=33, tenants=6, cas=1, certificates=300)
    label = {t.tenant_id: f"{t.name}-eu" for t in sim.tenants}  # the config's names
    count = 3
    owner = {name: shard_of(name, count) for name in label.values()}
    assert set(owner.values()) == {0, 1, 2}, owner  # every shard holds a tenant
    cfg = write_config(
        tmp_path / "config.yaml", [tenant_config(sim, t, label[t.tenant_id]) for t in sim.tenants]
    )
    secrets = secret_env(sim, label)
    exporters = [
        start_exporter("--config.file", str(cfg), "--tenant-shard", "0/3", env=secrets),
        start_exporter("--config.file", str(cfg), "--tenant-shard", "1/3", env=secrets),
        # the StatefulSet way: the ordinal from the pod name
        start_exporter(
            "--config.file",
            str(cfg),
            "--tenant-shard",
            "auto/3",
            env={**secrets, "POD_NAME": "pki-exporter-2"},
        ),
    ]
    truth = sim.expected_samples(now=ANCHOR, windows=WINDOWS, tenant_names=label)
    want = {k: v for k, v in truth.items() if k[0] in CERT_METRICS}
    union: Samples = {}
    for index, exporter in enumerate(exporters):
        mine = {name for name, shard in owner.items() if shard == index}
        samples = exporter.wait_for(lambda s, n=len(mine): refreshed(s, n))
        assert tenant_labels(samples) == mine  # only its own tenants, in every metric
        certs = {k: v for k, v in samples.items() if k[0] in CERT_METRICS}
        assert not set(certs) & set(union)  # disjoint
        union.update(certs)
        assert f"tenant_shard={index}/3" in exporter.log()
    assert union == want  # together: every tenant, exactly
    # Each tenant was read by one replica only: MSAL caches the token for an hour, so one
    # token request per tenant means one process asked for it.
    tokens = [e.tenant_id for e in sim.log if e.endpoint == "token"]
    assert sorted(tokens) == sorted(t.tenant_id for t in sim.tenants)


def test_reload_keeps_the_shard_and_an_empty_shard_is_ready(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_simulator(seed=34, tenants=4, cas=1, certificates=50)
    tenants = sim.tenants
    label = {t.tenant_id: f"{t.name}-eu" for t in tenants}
    secrets = secret_env(sim, label)
    first = label[tenants[0].tenant_id]
    other_shard = 1 - shard_of(first, 2)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, tenants[0], first)])
    # The shard that holds none of the configured tenants still starts and is ready.
    exporter = start_exporter(
        "--config.file", str(cfg), "--tenant-shard", f"{other_shard}/2", env=secrets
    )
    samples = exporter.scrape()
    assert tenant_labels(samples) == set()
    assert "falls to this shard" in exporter.log()
    # All four tenants in the file now; SIGHUP reloads it through the same shard.
    write_config(
        tmp_path / "config.yaml", [tenant_config(sim, t, label[t.tenant_id]) for t in tenants]
    )
    mine = {name for name in label.values() if shard_of(name, 2) == other_shard}
    assert mine, "the seed gives this shard no tenant"
    exporter.signal(signal.SIGHUP)
    samples = exporter.wait_for(lambda s: refreshed(s, len(mine)), what="reloaded shard")
    assert tenant_labels(samples) == mine
