"""Each CA's last snapshot on disk (``--storage.path``), so that a restart is not blind.

A large tenant's refresh takes minutes under Graph's budget; without this every restart
serves no certificate series until its first refresh ends. After each successful refresh
of a CA its snapshot is written to one file of its own, atomically (a temporary file,
fsync, rename, fsync of the directory), and at start-up every readable file of a
configured CA is served at once, flagged as restored, until a fresh refresh replaces it.

A file is ``MAGIC``, the format version, the length and the SHA-256 of the payload, then
the payload: msgpack of `_Payload`. Anything that does not check out (truncated, corrupt,
another version, another tenant id, another CA, other expiry windows) is logged in one line
and ignored, never fatal; the next successful refresh overwrites it. A file of a tenant no
longer configured, or of a CA no longer configured or listed, is deleted. Files of tenants
that are configured but belong to another ``--tenant-shard`` are left alone.

The files hold no secret, assertion or token (nothing of the credentials reaches a
snapshot), but they do hold personal data: device names and user principal names of the
drill-down rows. Files are created 0600, the directory 0700.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import sys
import tempfile
import threading
from array import array
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from pki_exporter.aggregate.certificates import LeafAggregate
from pki_exporter.aggregate.devices import AtRiskDevice, DeviceAggregate
from pki_exporter.aggregate.revocations import StoredRevocations, from_stored, to_stored
from pki_exporter.config.model import Config, TenantConfig
from pki_exporter.graph.records import CARecord
from pki_exporter.runtime import clock, logs
from pki_exporter.state import CASnapshot, Store

log = logs.get("storage")

MAGIC = b"PKIXSNAP"
FORMAT_VERSION = 2
"""Bumped whenever `_Payload` changes shape: an older or newer file is ignored, not misread."""
_HEADER = struct.Struct(">8sHxxQ32s")
"""magic, format version, two spare bytes, payload length, SHA-256 of the payload."""
SUFFIX = ".snapshot"
_NAME = re.compile(
    r"[^/]*-(?P<tenant>[0-9a-f]{16})_(?P<ca>[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12})"
    + re.escape(SUFFIX)
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SnapshotError(ValueError):
    """A snapshot file that cannot be used; the message says why in a few words."""


# -- the payload --------------------------------------------------------------------------


class _Info(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    display_name: str | None
    status: str
    type: str
    key_size: str
    hashing_algorithm: str
    key_platform: str
    expiry: float | None
    crl_url: str | None = None
    certificate_url: str | None = None


class _Leaves(msgspec.Struct, forbid_unknown_fields=True):
    counts: list[tuple[str, str, int]]
    earliest_expiry: float | None
    expiring: list[tuple[int, int]]
    latest_issuance: float | None
    invalid: int
    total: int


class _Devices(msgspec.Struct, forbid_unknown_fields=True):
    devices: dict[str, int]
    expiring: list[tuple[int, dict[str, int]]]
    renewal_due: list[tuple[int, dict[str, int]]]
    without_device: int
    at_risk_ends: bytes
    """float64 little-endian, ascending (8 bytes a device at risk)."""
    rows: list[tuple[float, str, str | None, str | None, str, str | None, str | None]]
    complete_until: float | None
    largest_window: int
    now: float


class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    tenant_id: str
    ca_id: str
    label: str
    windows: list[int]
    read_at: float
    duration: float | None
    written_at: float
    info: _Info
    leaves: _Leaves
    devices: _Devices
    revocations: StoredRevocations | None = None
    """What the CRL coverage check needs (format 2)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Payload)


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """What one file holds: a CA's snapshot and whose it is."""

    tenant: str
    tenant_id: str
    ca_id: str
    label: str
    windows: tuple[int, ...]
    snapshot: CASnapshot
    duration: float | None


def _floats_to_bytes(values: array[float]) -> memoryview:
    """The array's own memory on little-endian hosts (no copy of a million floats)."""
    if sys.byteorder == "little":
        return memoryview(values)
    swapped = array("d", values)
    swapped.byteswap()
    return memoryview(swapped)


def _floats_from_bytes(data: bytes) -> array[float]:
    if len(data) % 8:
        raise SnapshotError("at_risk_ends is not a list of float64")
    values = array("d")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def encode(stored: StoredSnapshot, written_at: float | None = None) -> bytes:
    """The bytes of a snapshot file (header and payload)."""
    return b"".join(encode_parts(stored, written_at))


def encode_parts(stored: StoredSnapshot, written_at: float | None = None) -> tuple[bytes, bytes]:
    """The header and the payload of a snapshot file, written one after the other (joining
    them would copy the payload: megabytes for a CA with a million devices at risk)."""
    snap = stored.snapshot
    info, leaves, dev = snap.info, snap.leaves, snap.devices
    payload = _Payload(
        tenant=stored.tenant,
        tenant_id=stored.tenant_id,
        ca_id=stored.ca_id,
        label=stored.label,
        windows=list(stored.windows),
        read_at=snap.read_at,
        duration=stored.duration,
        written_at=clock.now() if written_at is None else written_at,
        info=_Info(
            id=info.id,
            display_name=info.display_name,
            status=info.status,
            type=info.type,
            key_size=info.key_size,
            hashing_algorithm=info.hashing_algorithm,
            key_platform=info.key_platform,
            expiry=info.expiry,
            crl_url=info.crl_url,
            certificate_url=info.certificate_url,
        ),
        revocations=to_stored(snap.revocations),
        leaves=_Leaves(
            counts=[(status, platform, n) for (status, platform), n in leaves.counts.items()],
            earliest_expiry=leaves.earliest_expiry,
            expiring=list(leaves.expiring),
            latest_issuance=leaves.latest_issuance,
            invalid=leaves.invalid,
            total=leaves.total,
        ),
        devices=_Devices(
            devices=dict(dev.devices),
            expiring=[(days, dict(by)) for days, by in dev.expiring],
            renewal_due=[(days, dict(by)) for days, by in dev.renewal_due],
            without_device=dev.without_device,
            at_risk_ends=_floats_to_bytes(dev.at_risk_ends),  # type: ignore[arg-type]
            rows=[
                (
                    r.end,
                    r.device_id,
                    r.device_name,
                    r.user,
                    r.platform,
                    r.serial_number,
                    r.thumbprint,
                )
                for r in dev.rows
            ],
            complete_until=dev.complete_until,
            largest_window=dev.largest_window,
            now=dev.now,
        ),
    )
    body = _encoder.encode(payload)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest())
    return header, body


def decode(data: bytes) -> StoredSnapshot:
    """A snapshot file's bytes -> its content; `SnapshotError` when they do not check out."""
    if len(data) < _HEADER.size:
        raise SnapshotError("truncated (no complete header)")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a pki-exporter snapshot")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"format version {version}, this exporter reads {FORMAT_VERSION}")
    body = memoryview(data)[_HEADER.size :]
    if len(body) != length:
        raise SnapshotError(f"truncated ({len(body)} of {length} payload bytes)")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError("corrupt (checksum mismatch)")
    try:
        p = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SnapshotError(f"unreadable payload: {str(exc)[:120]}") from None
    try:
        revocations = from_stored(p.revocations)
    except ValueError as exc:
        raise SnapshotError(str(exc)) from None
    leaves = LeafAggregate(
        counts={(status, platform): n for status, platform, n in p.leaves.counts},
        earliest_expiry=p.leaves.earliest_expiry,
        expiring=tuple(p.leaves.expiring),
        latest_issuance=p.leaves.latest_issuance,
        invalid=p.leaves.invalid,
        total=p.leaves.total,
    )
    d = p.devices
    devices = DeviceAggregate(
        devices=d.devices,
        expiring=tuple(d.expiring),
        renewal_due=tuple(d.renewal_due),
        without_device=d.without_device,
        at_risk_ends=_floats_from_bytes(d.at_risk_ends),
        rows=tuple(AtRiskDevice(*row) for row in d.rows),
        complete_until=d.complete_until,
        largest_window=d.largest_window,
        now=d.now,
    )
    i = p.info
    info = CARecord(
        i.id,
        i.display_name,
        i.status,
        i.type,
        i.key_size,
        i.hashing_algorithm,
        i.key_platform,
        i.expiry,
        i.crl_url,
        i.certificate_url,
    )
    return StoredSnapshot(
        tenant=p.tenant,
        tenant_id=p.tenant_id,
        ca_id=p.ca_id,
        label=p.label,
        windows=tuple(p.windows),
        snapshot=CASnapshot(info, leaves, p.read_at, devices, revocations),
        duration=p.duration,
    )


# -- file names ---------------------------------------------------------------------------


def tenant_key(tenant: str) -> str:
    """16 hex digits of SHA-256 of the tenant's configured name: any name, a safe file name."""
    return hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:16]


def file_name(tenant: str, ca_id: str) -> str:
    """``<readable part of the tenant name>-<tenant key>_<ca id>.snapshot``; only the key and
    the CA id are read back, the readable part is for people listing the directory."""
    readable = _UNSAFE.sub("_", tenant).lstrip(".")[:40] or "tenant"
    return f"{readable}-{tenant_key(tenant)}_{ca_id.lower()}{SUFFIX}"


def write_atomically(directory: Path, name: str, *chunks: bytes) -> None:
    """Temporary file (0600) in ``directory``, fsync, rename over ``name``, fsync the directory:
    after a crash the file is the old one or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def ca_label(tenant: TenantConfig, ca_id: str, display_name: str | None) -> str:
    """The `ca` label, as the refresher makes it: configured name, displayName, id."""
    if tenant.certification_authorities != "all":
        for ref in tenant.certification_authorities:
            if ref.id == ca_id and ref.name:
                return ref.name
    return display_name or ca_id


# -- the directory ------------------------------------------------------------------------


class SnapshotStorage:
    """The ``--storage.path`` directory: writes after refreshes, reads at start-up."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.write_failures = 0
        """Snapshot writes that failed (disk full, read-only, permissions), since start."""
        self._lock = threading.Lock()

    def _ensure_directory(self) -> None:
        if not self.path.is_dir():
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.chmod(0o700)

    def _files(self) -> Iterator[tuple[Path, re.Match[str] | None]]:
        try:
            entries = sorted(self.path.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            yield entry, _NAME.fullmatch(entry.name)

    def _ignore(self, file: Path, reason: str) -> None:
        logs.event(log, logging.WARNING, "snapshot file ignored", file=file.name, reason=reason)

    def _delete(self, file: Path, reason: str) -> None:
        try:
            file.unlink(missing_ok=True)
        except OSError as exc:
            logs.event(
                log,
                logging.WARNING,
                "stale snapshot file could not be deleted",
                file=file.name,
                reason=reason,
                error=_why(exc),
            )
            return
        logs.event(log, logging.INFO, "stale snapshot file deleted", file=file.name, reason=reason)

    # -- start-up ---------------------------------------------------------------------

    def restore(self, config: Config, configured_tenants: Collection[str], store: Store) -> int:
        """Serve every readable snapshot of ``config``'s CAs; delete what no longer belongs.

        ``config`` holds this replica's tenants, ``configured_tenants`` every tenant of the
        config file (a tenant of another shard is configured: its files are not stale).
        Returns the number of CAs restored. Never raises for a file or the directory.
        """
        try:
            self._ensure_directory()
        except OSError as exc:
            logs.event(
                log,
                logging.WARNING,
                "storage directory unusable; nothing restored, writes will be retried",
                path=str(self.path),
                error=_why(exc),
            )
            return 0
        restored: dict[str, set[str]] = {}
        try:
            files = self._owned(config, configured_tenants, temporary=True)
        except OSError as exc:
            logs.event(
                log,
                logging.WARNING,
                "storage directory unreadable; nothing restored",
                path=str(self.path),
                error=_why(exc),
            )
            return 0
        for file, tenant, ca_id in files:
            stored = self._read(file, tenant, ca_id, config.expiry_windows_days)
            if stored is None:
                continue
            label = ca_label(tenant, ca_id, stored.snapshot.info.display_name)
            store.restore(tenant.name, ca_id, label, stored.snapshot, stored.duration)
            restored.setdefault(tenant.name, set()).add(ca_id)
            logs.event(
                log,
                logging.INFO,
                "snapshot restored",
                tenant=tenant.name,
                ca_id=ca_id,
                read_at=round(stored.snapshot.read_at, 3),
            )
        for tenant in config.tenants:
            got = restored.get(tenant.name, set())
            configured = tenant.certification_authorities
            # Discovery: the CAs of the last run are all we know. A list: every one of them.
            if got and (configured == "all" or got >= {ref.id for ref in configured}):
                store.mark_restored(tenant.name)
        return sum(len(cas) for cas in restored.values())

    def _read(
        self, file: Path, tenant: TenantConfig, ca_id: str, windows: tuple[int, ...]
    ) -> StoredSnapshot | None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            self._ignore(file, f"unreadable: {_why(exc)}")
            return None
        try:
            stored = decode(data)
        except SnapshotError as exc:
            self._ignore(file, str(exc))
            return None
        except Exception as exc:  # a file that checks out but does not fit: never fatal
            self._ignore(file, f"unreadable payload: {type(exc).__name__}")
            return None
        if stored.tenant_id.lower() != tenant.tenant_id.lower() or stored.tenant != tenant.name:
            # The name now stands for another tenant: its CAs are not this tenant's.
            self._delete(file, "written for another tenant id")
            return None
        if stored.ca_id != ca_id or stored.snapshot.info.id.lower() != ca_id:
            self._ignore(file, "written for another CA")
            return None
        if stored.windows != tuple(sorted(windows)):
            self._ignore(file, "written with other expiry_windows_days")
            return None
        return stored

    # -- while running ----------------------------------------------------------------

    def save(
        self, tenant: TenantConfig, store: Store, ca_id: str, windows: tuple[int, ...]
    ) -> bool:
        """Write a CA's snapshot just refreshed; a failure is logged and counted, not raised."""
        ca = store.tenants[tenant.name].cas.get(ca_id)
        if ca is None or ca.snapshot is None or ca.restored:
            return False  # removed meanwhile; nothing new to write
        stored = StoredSnapshot(
            tenant=tenant.name,
            tenant_id=tenant.tenant_id,
            ca_id=ca_id,
            label=ca.label,
            windows=tuple(sorted(windows)),
            snapshot=ca.snapshot,
            duration=ca.last_duration,
        )
        name = file_name(tenant.name, ca_id)
        with self._lock:
            try:
                header, body = encode_parts(stored)
                self._ensure_directory()
                write_atomically(self.path, name, header, body)
            except OSError as exc:
                self.write_failures += 1
                logs.event(
                    log,
                    logging.WARNING,
                    "snapshot write failed; serving from memory",
                    tenant=tenant.name,
                    ca_id=ca_id,
                    file=name,
                    error=_why(exc),
                )
                return False
        return True

    def forget_unlisted(self, tenant: TenantConfig, listed: Collection[str]) -> None:
        """After a CA discovery: delete the files of this tenant's CAs it no longer lists."""
        key = tenant_key(tenant.name)
        try:
            files = list(self._files())
        except OSError:
            return
        for file, match in files:
            if (
                match is not None
                and match.group("tenant") == key
                and match.group("ca") not in listed
            ):
                self._delete(file, "CA no longer listed by discovery")

    def sweep(self, config: Config, configured_tenants: Collection[str]) -> None:
        """After a config reload: delete the files of tenants and listed CAs now gone."""
        try:
            self._owned(config, configured_tenants)
        except OSError:
            return

    def _owned(
        self, config: Config, configured_tenants: Collection[str], *, temporary: bool = False
    ) -> list[tuple[Path, TenantConfig, str]]:
        """The files of this replica's configured CAs, as (file, tenant, CA id); deletes the
        files of tenants no longer configured and of CAs no longer in a tenant's list (and,
        with ``temporary``, the leftovers of interrupted writes: only at start-up, when no
        write is under way). Files of another shard's tenants are left alone."""
        mine = {tenant_key(t.name): t for t in config.tenants}
        everyone = {tenant_key(name) for name in configured_tenants}
        owned: list[tuple[Path, TenantConfig, str]] = []
        for file, match in self._files():
            if match is None:
                if temporary and file.name.startswith(".") and file.name.endswith(".tmp"):
                    self._delete(file, "temporary file of an interrupted write")
                continue
            key, ca_id = match.group("tenant"), match.group("ca")
            tenant = mine.get(key)
            if tenant is None:
                if key not in everyone:
                    self._delete(file, "tenant no longer configured")
                continue  # a tenant of another shard
            configured = tenant.certification_authorities
            if configured != "all" and ca_id not in {ref.id for ref in configured}:
                self._delete(file, "CA no longer configured")
                continue
            owned.append((file, tenant, ca_id))
        return owned
