"""The simulators' RSA keys, made once per checkout and shared by every test process.

A simulator needs three RSA-2048 keys (token signing, the workload-identity issuer, an
app certificate); ``pki_simulator.tls.new_rsa_key`` makes at most 16 per process, at
about 70 ms of CPU each, which every pytest-xdist worker of every run paid again (a
second of CPU per worker, 8 workers). The session's first process now makes them once,
in two threads (OpenSSL lets go of the GIL), keeps them in pytest's cache directory
(``.pytest_cache/d/pki-simulator/``, never committed) and every process of the session,
the workers included, reads them from there. They are test keys: they sign tokens and
certificates of simulated tenants that live for one test.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

COUNT = 16
FILE_NAME = "rsa-2048.pem"


def _make() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def read(path: Path) -> list[rsa.RSAPrivateKey] | None:
    """The keys kept in ``path``, or None when it is missing, short or unreadable."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    keys: list[rsa.RSAPrivateKey] = []
    marker = b"-----END PRIVATE KEY-----"
    for piece in blob.split(marker)[:-1]:
        try:
            key = serialization.load_pem_private_key(
                piece + marker, password=None, unsafe_skip_rsa_key_validation=True
            )
        except ValueError:
            return None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
            return None
        keys.append(key)
    if len(keys) != COUNT or len({k.public_key().public_numbers().n for k in keys}) != COUNT:
        return None
    return keys


def make(path: Path) -> list[rsa.RSAPrivateKey]:
    """The keys kept in ``path``, made and written (atomically) when they are not there."""
    keys = read(path)
    if keys is not None:
        return keys
    with ThreadPoolExecutor(2) as pool:
        keys = list(pool.map(lambda _: _make(), range(COUNT)))
    blob = b"".join(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for key in keys
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(temporary, path)
    return keys
