"""CRL checks: parse a 100,000-entry CRL, fold and check 1,000,000 certificates (10% revoked).

Each figure runs in a child process of its own (``python -m bench.crl --child ...``), so
that the RSS it adds is its own: measured as VmRSS after minus before, and the peak
(VmHWM) of the whole child. Baselines, in the same run:

- parse: what one writes with ``cryptography`` alone: ``load_der_x509_crl``, the signature
  check, and a ``set`` of the entries' serial numbers (kept, as a coverage check needs);
- fold + coverage: the revoked certificates kept as one tuple of Python objects each
  (serial int, revocation time, end, URL, thumbprint, device id) and checked against a
  ``set`` of CRL serial ints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row, Table, verdict

ENTRIES = 100_000
CERTIFICATES = 1_000_000
REVOKED_SHARE = 10  # one in ten
PAGE = 1000
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
URL = "http://primary-cdn.pki.azure.net/centralus/crls/0123456789abcdef0123456789abcdef/x_v1/current.crl"


def _trim() -> None:
    """Give freed heap back to the system, so that VmRSS counts what is still held."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _serial(i: int) -> int:
    return (0x5A << 120) | (i * 0x9E3779B97F4A7C15 % (1 << 120))


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return _tlv(0x02, raw)


def _utc(when: datetime) -> bytes:
    return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())


def build_crl(path: Path, entries: int) -> None:
    """A real CRL of ``entries`` revoked serials, 1% of them left out (unpublished), DER
    written by hand: ``CertificateRevocationListBuilder`` copies its list on every entry
    (minutes for 100,000). cryptography checks what this writes: the parse verifies it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.derive_private_key(0x1234567, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    algorithm = _tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))  # ecdsa-with-SHA256
    when = _utc(NOW - timedelta(days=2))
    revoked = b"".join(_tlv(0x30, _int(_serial(i)) + when) for i in range(entries) if i % 100 != 99)
    tbs = _tlv(
        0x30,
        _int(1)
        + algorithm
        + name.public_bytes()
        + _utc(NOW - timedelta(hours=1))
        + _utc(NOW + timedelta(days=7))
        + _tlv(0x30, revoked),
    )
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    crl = _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    path.with_suffix(".crl").write_bytes(crl)
    path.with_suffix(".cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))


# -- the child ------------------------------------------------------------------------------


def _child_parse(path: Path, baseline: bool) -> dict[str, Any]:
    from cryptography import x509

    from pki_exporter.crl.parse import parse_crl

    data = path.with_suffix(".crl").read_bytes()
    cert = x509.load_der_x509_certificate(path.with_suffix(".cer").read_bytes())
    _trim()
    before = _status("VmRSS")
    started = time.perf_counter()
    if baseline:
        crl = x509.load_der_x509_crl(data)
        assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
        kept: Any = {entry.serial_number for entry in crl}
        del crl
        entries = len(kept)
    else:
        kept = parse_crl(data, cert)
        entries = kept.entries
    seconds = time.perf_counter() - started
    _trim()
    return {
        "seconds": seconds,
        "entries": entries,
        "bytes": len(data),
        "added_mb": (_status("VmRSS") - before) / 2**20,
        "peak_mb": _status("VmHWM") / 2**20,
    }


def _records(start: int, count: int) -> list[Any]:
    from pki_exporter.graph.records import LeafRecord

    revoked = (NOW - timedelta(days=2)).isoformat()
    end = NOW + timedelta(days=200)
    begin = NOW - timedelta(days=100)
    out = []
    for i in range(start, start + count):
        is_revoked = i % REVOKED_SHARE == 0
        out.append(
            LeafRecord(
                validityStartDateTime=begin,
                validityEndDateTime=end,
                certificateStatus="revoked" if is_revoked else "active",
                deviceId=f"{i:08x}-0000-4000-8000-000000000000",
                serialNumber=f"{_serial(i // REVOKED_SHARE) if is_revoked else i:x}",
                thumbprint=f"{i:040x}",
                crlDistributionPointUrl=URL,
                certificationAuthorityIssuerUri=None,
                revocationDateTime=revoked if is_revoked else None,
            )
        )
    return out


def _child_coverage(path: Path, baseline: bool) -> dict[str, Any]:
    from cryptography import x509

    from pki_exporter.aggregate.revocations import RevocationFold, serial_bytes
    from pki_exporter.crl.coverage import coverage
    from pki_exporter.crl.parse import parse_crl
    from pki_exporter.graph.records import parse_timestamp

    data = path.with_suffix(".crl").read_bytes()
    cert = x509.load_der_x509_certificate(path.with_suffix(".cer").read_bytes())
    info = parse_crl(data, cert)
    crl_ints = {int.from_bytes(k, "big") for k in info.serial_set()} if baseline else None
    now = NOW.timestamp()
    _trim()
    before = _status("VmRSS")
    fold_seconds = 0.0
    fold = RevocationFold(now, URL)
    naive: list[tuple[int, float, float, str, str, str]] = []
    for start in range(0, CERTIFICATES, PAGE):
        page = _records(start, PAGE)
        t0 = time.perf_counter()
        if baseline:
            for r in page:
                if r.certificateStatus == "revoked" and r.validityEndDateTime.timestamp() > now:
                    serial = serial_bytes(r.serialNumber)
                    revoked_at = parse_timestamp(r.revocationDateTime)
                    if serial is None or revoked_at is None:
                        continue
                    naive.append(
                        (
                            int.from_bytes(serial, "big"),
                            revoked_at,
                            r.validityEndDateTime.timestamp(),
                            r.crlDistributionPointUrl,
                            r.thumbprint,
                            r.deviceId,
                        )
                    )
        else:
            fold.add(page)
        fold_seconds += time.perf_counter() - t0
        del page
    t0 = time.perf_counter()
    if baseline:
        assert crl_ints is not None
        cutoff = now - 4 * 3600
        missing = sum(
            1 for s, when, end, *_ in naive if end > now and when < cutoff and s not in crl_ints
        )
        kept = len(naive)
    else:
        result = fold.result()
        del fold
        missing = coverage(result, {URL: info}, now, 4 * 3600).unpublished
        kept = len(result)
    check_seconds = time.perf_counter() - t0
    columns = 0
    if not baseline:
        columns = len(result.serials) + len(result.thumbprints) + len(result.device_ids)
        columns += 8 * (len(result.revoked_at) + len(result.ends)) + len(result.crl_index)
    _trim()
    return {
        "columns_bytes": columns,
        "fold_seconds": fold_seconds,
        "check_seconds": check_seconds,
        "revoked": kept,
        "unpublished": missing,
        "added_mb": (_status("VmRSS") - before) / 2**20,
        "peak_mb": _status("VmHWM") / 2**20,
    }


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["parse", "coverage"])
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    work = _child_parse if args.child == "parse" else _child_coverage
    print(json.dumps(work(args.path, args.baseline)))
    return 0


def _spawn(kind: str, path: Path, baseline: bool) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.crl", "--child", kind, str(path)]
    if baseline:
        args.append("--baseline")
    out = subprocess.run(args, cwd=ROOT, capture_output=True, check=True, timeout=900)
    return dict(json.loads(out.stdout))


def run(table: Table, *, quick: bool = False) -> None:
    print(f"\n== CRL checks: a CRL of {ENTRIES:,} entries, {CERTIFICATES:,} certificates "
          f"({100 // REVOKED_SHARE}% revoked)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pki-bench-crl-") as tmp:
        path = Path(tmp) / "bench"
        t0 = time.perf_counter()
        build_crl(path, ENTRIES)
        print(f"   CRL built and signed in {time.perf_counter() - t0:.1f} s", flush=True)
        repeat = 1 if quick else 3
        ours = [_spawn("parse", path, False) for _ in range(repeat)]
        base = [_spawn("parse", path, True) for _ in range(repeat)]
        o = min(ours, key=lambda r: r["seconds"])
        b = min(base, key=lambda r: r["seconds"])
        table.add(
            Row(
                f"CRL parse + verify, {o['entries']:,} entries ({o['bytes'] / 2**20:.1f} MB DER)",
                f"{o['seconds']:.2f} s, +{o['added_mb']:.1f} MB kept",
                f"cryptography load + verify + set of serials: {b['seconds']:.2f} s, "
                f"+{b['added_mb']:.1f} MB",
                f"{b['seconds'] / o['seconds']:.2f}x speed, "
                f"{b['added_mb'] / max(o['added_mb'], 0.1):.1f}x less memory",
                "kept memory well under the baseline",
                verdict(o["added_mb"] < b["added_mb"]),
            )
        )
        oc = _spawn("coverage", path, False)
        bc = _spawn("coverage", path, True)
        assert oc["unpublished"] == bc["unpublished"], (oc, bc)
        per = oc["added_mb"] * 2**20 / max(oc["revoked"], 1)
        table.add(
            Row(
                f"revocation fold + coverage, {CERTIFICATES:,} certificates, "
                f"{oc['revoked']:,} revoked, {oc['unpublished']:,} unpublished",
                f"fold {oc['fold_seconds']:.2f} s + check {oc['check_seconds']:.2f} s, "
                f"+{oc['added_mb']:.1f} MB RSS ({per:.0f} B a revoked certificate; the "
                f"columns {oc['columns_bytes'] / max(oc['revoked'], 1):.0f} B), "
                f"peak RSS {oc['peak_mb']:.0f} MB",
                f"tuples + set of ints: fold {bc['fold_seconds']:.2f} s + check "
                f"{bc['check_seconds']:.2f} s, +{bc['added_mb']:.1f} MB",
                f"{(bc['fold_seconds'] + bc['check_seconds']) / (oc['fold_seconds'] + oc['check_seconds']):.2f}x speed, "
                f"{bc['added_mb'] / max(oc['added_mb'], 0.1):.1f}x less memory",
                "peak < 150 MB",
                verdict(oc["peak_mb"] < 150),
            )
        )


if __name__ == "__main__":
    if "--child" in sys.argv:
        raise SystemExit(_child(sys.argv[1:]))
    t = Table()
    run(t, quick="--quick" in sys.argv)
    print(t.markdown())
