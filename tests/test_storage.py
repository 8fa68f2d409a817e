"""pki_exporter/storage.py: snapshot files (format, checks, atomic writes) and the directory
(restore, stale files, write failures), without processes. The end-to-end proof is in
tests/test_storage_e2e.py."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from pki_exporter import storage
from pki_exporter.aggregate.certificates import Fold
from pki_exporter.config.load import parse_config
from pki_exporter.config.model import Config
from pki_exporter.graph.records import CARecord, LeafRecord
from pki_exporter.runtime.logs import LogfmtFormatter
from pki_exporter.runtime.sharding import shard_of
from pki_exporter.state import CASnapshot, Store
from pki_exporter.storage import (
    FORMAT_VERSION,
    SnapshotError,
    SnapshotStorage,
    StoredSnapshot,
    decode,
    encode,
    file_name,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
WINDOWS = (7, 30, 90)
LOGFMT = LogfmtFormatter()
TENANT_ID = "11111111-2222-3333-4444-555555555555"
CA1 = "aaaaaaaa-0000-0000-0000-000000000001"
CA2 = "aaaaaaaa-0000-0000-0000-000000000002"


def make_snapshot(
    n: int = 3000, seed: int = 1, ca_id: str = CA1, days: float = 400, devices: int = 0
) -> CASnapshot:
    """A snapshot folded from ``n`` random records: every field of the aggregates filled,
    rows with missing and non-ASCII display fields, more devices at risk than the cap."""
    rng = random.Random(seed)
    now = datetime.fromtimestamp(NOW, tz=UTC)
    crl = "http://primary-cdn.pki.azure.net/eu/crls/ab/x_v1/current.crl"
    fold = Fold(NOW, WINDOWS, revocations=True, ca_crl_url=crl)
    records = []
    for i in range(n):
        end = now + timedelta(days=rng.uniform(-5, days), seconds=rng.random())
        records.append(
            LeafRecord(
                validityStartDateTime=end - timedelta(days=365),
                validityEndDateTime=end,
                certificateStatus=rng.choice(["active", "active", "revoked", "expired", None]),
                devicePlatform=rng.choice(["windows", "iOS", "android", None, "Ünknown-ß"]),
                deviceId=None if i % 17 == 0 else f"dev-{rng.randrange(devices or n // 2)}",
                deviceName=rng.choice([f"PC-{i}", None, 42, "ñame"]),
                userPrincipalName=rng.choice([f"user{i}@contoso.example", None]),
                serialNumber=f"{i:08x}",
                thumbprint=None if i % 5 == 0 else f"{i:040x}",
                crlDistributionPointUrl=rng.choice([crl, crl + "?v2", None]),
                revocationDateTime=rng.choice(["2026-11-01T00:00:00Z", None]),
            )
        )
    for start in range(0, n, 1000):
        fold.add(records[start : start + 1000])
    fold.add_invalid(3)
    info = CARecord(
        ca_id, "Contoso CA ✓", "active", "issuing", "rsa4096", "sha256", "hsm", NOW + 1e8, crl
    )
    assert fold.revocations is not None
    return CASnapshot(info, fold.result(), NOW, fold.devices.result(), fold.revocations.result())


def stored(snapshot: CASnapshot | None = None, **kw: object) -> StoredSnapshot:
    value = StoredSnapshot(
        tenant="contoso",
        tenant_id=TENANT_ID,
        ca_id=CA1,
        label="Contoso CA ✓",
        windows=WINDOWS,
        snapshot=snapshot or make_snapshot(),
        duration=1.25,
    )
    return dataclasses.replace(value, **kw)  # type: ignore[arg-type]


def config(*tenants: tuple[str, str, str | list[str]]) -> Config:
    """A config of (name, tenant id, "all" or CA ids) tenants."""
    lines = ["expiry_windows_days: [7, 30, 90]", "tenants:"]
    for name, tenant_id, cas in tenants:
        lines += [
            f"  - name: {name}",
            f"    tenant_id: {tenant_id}",
            "    client_id: 99999999-2222-3333-4444-555555555555",
            "    credential: {client_secret_env: PKI_EXPORTER_CLIENT_SECRET}",
        ]
        if cas == "all":
            lines.append("    certification_authorities: all")
        else:
            lines.append("    certification_authorities:")
            lines += [f"      - id: {ca}" for ca in cas]
    return parse_config("\n".join(lines) + "\n", "<test>")


# -- the file format ----------------------------------------------------------------------


def test_round_trip_gives_back_an_equal_snapshot() -> None:
    original = stored(make_snapshot(20000, days=100, devices=20000))
    devices = original.snapshot.devices
    assert devices.rows and len(devices.at_risk_ends) > len(devices.rows)
    assert devices.complete_until is not None  # more at risk than the drill-down keeps
    assert len(original.snapshot.revocations) > 1000  # the CRL checks' columns too
    assert len(original.snapshot.revocations.crl_urls) == 2
    assert decode(encode(original)) == original


def test_round_trip_of_an_empty_ca() -> None:
    fold = Fold(NOW, WINDOWS)
    info = CARecord(CA1, None, "active", "root", "rsa2048", "sha256", "software", None)
    empty = stored(CASnapshot(info, fold.result(), NOW, fold.devices.result()), duration=None)
    assert decode(encode(empty)) == empty


def test_every_truncation_is_refused() -> None:
    data = encode(stored(make_snapshot(200)))
    for length in range(len(data)):
        with pytest.raises(SnapshotError, match="truncated"):
            decode(data[:length])


def test_a_flipped_bit_anywhere_in_the_payload_is_refused() -> None:
    data = bytearray(encode(stored(make_snapshot(200))))
    for position in range(60, len(data), 7):
        data[position] ^= 0x10
        with pytest.raises(SnapshotError, match="corrupt"):
            decode(bytes(data))
        data[position] ^= 0x10
    assert decode(bytes(data)) == stored(make_snapshot(200))


def test_another_format_version_is_refused() -> None:
    data = bytearray(encode(stored(make_snapshot(200))))
    data[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "big")
    with pytest.raises(SnapshotError, match=f"format version {FORMAT_VERSION + 1}"):
        decode(bytes(data))


def test_another_file_is_refused() -> None:
    with pytest.raises(SnapshotError, match="not a pki-exporter snapshot"):
        decode(b"# HELP something else\n" * 10)


def test_file_names_are_safe_and_distinct_for_any_tenant_name() -> None:
    names = ["contoso", "Contoso", "../../etc", "a/b", ".hidden", "", "ünï cödé", "x" * 500, "a b"]
    files = {file_name(name, CA1) for name in names}
    assert len(files) == len(names)
    for name in files:
        assert "/" not in name and not name.startswith(".") and len(name) < 128
        assert storage._NAME.fullmatch(name)


# -- writing ------------------------------------------------------------------------------


def test_write_is_atomic_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_atomically(tmp_path, "f.snapshot", b"old")
    assert stat.S_IMODE((tmp_path / "f.snapshot").stat().st_mode) == 0o600

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        storage.write_atomically(tmp_path, "f.snapshot", b"new")
    assert (tmp_path / "f.snapshot").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.snapshot"]  # no temp file left


def save(directory: SnapshotStorage, cfg: Config, tenant: str, ca_id: str, n: int = 300) -> None:
    store = Store([t.name for t in cfg.tenants])
    store.set_cas(tenant, {ca_id: "label"})
    store.record_success(tenant, ca_id, "label", make_snapshot(n, ca_id=ca_id), 2.5)
    (tenant_config,) = [t for t in cfg.tenants if t.name == tenant]
    assert directory.save(tenant_config, store, ca_id, cfg.expiry_windows_days)


def test_save_then_restore_serves_the_snapshot(tmp_path: Path) -> None:
    cfg = config(("contoso", TENANT_ID, [CA1, CA2]))
    directory = SnapshotStorage(tmp_path / "state")
    save(directory, cfg, "contoso", CA1)
    save(directory, cfg, "contoso", CA2)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700

    store = Store(["contoso"])
    assert not store.ready()
    assert SnapshotStorage(tmp_path / "state").restore(cfg, ["contoso"], store) == 2
    tenant = store.tenants["contoso"]
    assert store.ready() and tenant.restored and not tenant.attempted
    ca = tenant.cas[CA1]
    assert ca.restored and ca.last_success and ca.last_duration == 2.5
    assert ca.label == "Contoso CA ✓"  # no configured name: Graph's displayName
    assert ca.snapshot == make_snapshot(300, ca_id=CA1)

    store.record_success("contoso", CA1, "x", make_snapshot(10, ca_id=CA1), 1.0)
    assert not store.tenants["contoso"].cas[CA1].restored
    assert store.tenants["contoso"].cas[CA2].restored


def test_a_partial_restore_of_a_ca_list_is_not_ready(tmp_path: Path) -> None:
    cfg = config(("contoso", TENANT_ID, [CA1, CA2]))
    directory = SnapshotStorage(tmp_path)
    save(directory, cfg, "contoso", CA1)
    store = Store(["contoso"])
    assert directory.restore(cfg, ["contoso"], store) == 1
    assert store.tenants["contoso"].cas[CA1].restored
    assert not store.ready()


def test_restore_sorts_out_what_no_longer_belongs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_id = "66666666-2222-3333-4444-555555555555"
    # Find a tenant name in another shard (1 of 2) than contoso.
    other_shard = next(
        f"t{i}" for i in range(100) if shard_of(f"t{i}", 2) != shard_of("contoso", 2)
    )
    everything = config(
        ("contoso", TENANT_ID, [CA1, CA2]),
        ("gone", other_id, "all"),
        (other_shard, other_id, "all"),
    )
    directory = SnapshotStorage(tmp_path)
    save(directory, everything, "contoso", CA1)
    save(directory, everything, "contoso", CA2)
    save(directory, everything, "gone", CA1)
    save(directory, everything, other_shard, CA1)
    (tmp_path / ".leftover.snapshot.abc.tmp").write_bytes(b"half")
    (tmp_path / "README").write_text("not ours")
    # Now: contoso lists only CA1, "gone" is gone, other_shard is configured elsewhere.
    configured = ["contoso", other_shard]
    mine = config(("contoso", TENANT_ID, [CA1]))
    store = Store(["contoso"])
    with caplog.at_level(logging.INFO, logger="pki_exporter.storage"):
        assert directory.restore(mine, configured, store) == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["README", file_name("contoso", CA1), file_name(other_shard, CA1)])
    deleted = "\n".join(LOGFMT.format(r) for r in caplog.records if "deleted" in r.getMessage())
    assert deleted.count("msg=") == 3, deleted
    assert deleted.count('reason="tenant no longer configured"') == 1
    assert deleted.count('reason="CA no longer configured"') == 1
    assert deleted.count('reason="temporary file of an interrupted write"') == 1


def test_unusable_files_are_ignored_in_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(("contoso", TENANT_ID, "all"))
    directory = SnapshotStorage(tmp_path)
    cas = [f"aaaaaaaa-0000-0000-0000-00000000000{i}" for i in range(1, 7)]
    for ca_id in cas:
        save(directory, cfg, "contoso", ca_id, n=100)
    files = [tmp_path / file_name("contoso", ca_id) for ca_id in cas]
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # corrupt
    files[1].write_bytes(data[: len(data) // 2])  # truncated
    files[2].write_bytes(data[:8] + b"\x00\x63" + data[10:])  # version 99
    files[3].write_bytes(files[4].read_bytes())  # another CA's content
    other_windows = msgspec.structs.replace(cfg, expiry_windows_days=(7, 30))
    store = Store(["contoso"])
    with caplog.at_level(logging.INFO, logger="pki_exporter.storage"):
        assert directory.restore(other_windows, ["contoso"], Store(["contoso"])) == 0
        caplog.clear()
        assert directory.restore(cfg, ["contoso"], store) == 2
    assert sorted(store.tenants["contoso"].cas) == sorted(cas[4:])
    ignored = [LOGFMT.format(r) for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 4
    assert not any("\n" in line for line in ignored)
    text = "\n".join(ignored)
    for why in ["checksum", "truncated", "format version 99", "another CA"]:
        assert text.count(why) == 1, text
    assert all(f.exists() for f in files)  # left for the next write to replace


def test_a_file_of_another_tenant_id_is_refused_and_deleted(tmp_path: Path) -> None:
    directory = SnapshotStorage(tmp_path)
    save(directory, config(("contoso", TENANT_ID, "all")), "contoso", CA1)
    other = config(("contoso", "77777777-2222-3333-4444-555555555555", "all"))
    store = Store(["contoso"])
    assert directory.restore(other, ["contoso"], store) == 0
    assert not store.tenants["contoso"].cas and not store.ready()
    assert list(tmp_path.iterdir()) == []


def test_discovery_forgets_unlisted_cas(tmp_path: Path) -> None:
    cfg = config(
        ("contoso", TENANT_ID, "all"), ("fabrikam", "66666666-2222-3333-4444-555555555555", "all")
    )
    directory = SnapshotStorage(tmp_path)
    for tenant in ("contoso", "fabrikam"):
        save(directory, cfg, tenant, CA1, n=50)
        save(directory, cfg, tenant, CA2, n=50)
    directory.forget_unlisted(cfg.tenants[0], {CA2})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [file_name("contoso", CA2), file_name("fabrikam", CA1), file_name("fabrikam", CA2)]
    )


def test_write_failures_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    cfg = config(("contoso", TENANT_ID, "all"))
    directory = SnapshotStorage(blocker / "state")
    store = Store(["contoso"])
    assert directory.restore(cfg, ["contoso"], store) == 0
    store.set_cas("contoso", {CA1: "x"})
    store.record_success("contoso", CA1, "x", make_snapshot(50), 1.0)
    assert not directory.save(cfg.tenants[0], store, CA1, WINDOWS)
    assert not directory.save(cfg.tenants[0], store, CA1, WINDOWS)
    assert directory.write_failures == 2


def test_a_checksummed_payload_of_another_shape_is_refused() -> None:
    import hashlib

    import msgspec

    body = msgspec.msgpack.encode({"tenant": "contoso", "rows": [1, 2, 3]})
    header = storage._HEADER.pack(
        storage.MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest()
    )
    with pytest.raises(SnapshotError, match="unreadable payload"):
        decode(header + body)
