"""The simulators' RSA keys, made once per checkout and shared by every test process.

A simulator needs three RSA-2048 keys (token signing, the workload-identity issuer, an
app certificate); ``pki_simulator.tls.new_rsa_key`` makes at most 16 per process, at
about 70 ms of CPU each, which every pytest-xdist worker of every run paid again (a
second of CPU per worker, 8 workers). The session's first process (the xdist controller,
or the only one) now reads them from pytest's cache directory
(``.pytest_cache/d/pki-simulator/``, never committed), or makes them there in two threads
(OpenSSL lets go of the GIL), and hands them to its workers with their start-up input
(tests/conftest.py). Without a usable cache directory they are made for the session and
not kept. They are test keys: they sign tokens and certificates of simulated tenants that
live for one test.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_simulator.tls import RSA_POOL

COUNT = RSA_POOL
FILE_NAME = "rsa-2048.pem"
_END = b"-----END PRIVATE KEY-----"


def parse(blob: bytes) -> list[rsa.RSAPrivateKey] | None:
    """The ``COUNT`` different RSA-2048 keys of ``blob`` (PKCS#8 PEM), or None."""
    keys: list[rsa.RSAPrivateKey] = []
    for piece in blob.split(_END)[:-1]:
        try:
            key = serialization.load_pem_private_key(
                piece + _END, password=None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
            return None
        keys.append(key)
    if len(keys) != COUNT or len({k.public_key().public_numbers().n for k in keys}) != COUNT:
        return None
    return keys


def pem(keys: list[rsa.RSAPrivateKey]) -> bytes:
    return b"".join(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for key in keys
    )


def read(path: Path) -> list[rsa.RSAPrivateKey] | None:
    """The keys kept in ``path``, or None when it is missing, short or unreadable."""
    try:
        return parse(path.read_bytes())
    except OSError:
        return None


def make(path: Path | None) -> list[rsa.RSAPrivateKey]:
    """The keys kept in ``path``; else new ones, kept there (atomically) when it can be
    written, and returned all the same when it cannot."""
    keys = read(path) if path is not None else None
    if keys is not None:
        return keys
    with ThreadPoolExecutor(2) as pool:
        keys = list(pool.map(lambda _: _generate(), range(COUNT)))
    if path is not None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem(keys))
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
    return keys


def _generate() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
