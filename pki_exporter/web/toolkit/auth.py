"""Basic auth: `basic_auth_users` checked with bcrypt, verdicts cached, no timing oracle."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import bcrypt

# Compared against when the user is unknown, so that timing does not tell which user
# names exist (the toolkit does the same). bcrypt of a random string, cost 10.
_DUMMY_HASH: Final = b"$2b$10$F1XddTVYYtYt37svW0m02eQeks/07XtTprws635OF4oYoj9P.rnLG"
_BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt reads no further (Go and htpasswd truncate)
_AUTH_CACHE_SIZE: Final = 1024


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an `Authorization: Basic` header, as Go's Request.BasicAuth."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class _AuthCache:
    """Bounded LRU of bcrypt verdicts keyed by (user, hash, HMAC of the password).

    The password itself is never kept: a per-process key makes the digest useless for
    offline guessing should memory leak.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[bytes, bytes, bytes], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)

    def key(self, user: bytes, hashed: bytes, password: bytes) -> tuple[bytes, bytes, bytes]:
        return user, hashed, hmac.digest(self._key, password, "sha256")

    def get(self, key: tuple[bytes, bytes, bytes]) -> bool | None:
        with self._lock:
            verdict = self._items.get(key)
            if verdict is not None:
                self._items.move_to_end(key)
            return verdict

    def put(self, key: tuple[bytes, bytes, bytes], verdict: bool) -> None:
        with self._lock:
            self._items[key] = verdict
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class BasicAuth:
    """Checks `Authorization` headers against a users -> bcrypt hash mapping.

    User names are compared in constant time and unknown users still cost one bcrypt, so
    timing tells nothing about which exist. One bcrypt runs at a time, as in the toolkit;
    verdicts are cached (bounded), so a scraper's every request costs no bcrypt.
    """

    def __init__(self, cache_size: int = _AUTH_CACHE_SIZE) -> None:
        self._bcrypt_lock = threading.Lock()
        self._cache = _AuthCache(cache_size)

    def check(self, users: Mapping[str, str], authorization: str | None) -> bool:
        """True when `users` is empty, or the header names one of them with its password."""
        if not users:
            return True
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed: bytes | None = None
        for name, candidate in users.items():  # no early exit
            if hmac.compare_digest(name.encode(), user):
                hashed = candidate.encode("ascii")
        known = hashed is not None
        hashed = hashed or _DUMMY_HASH
        key = self._cache.key(user, hashed, password)
        verdict = self._cache.get(key)
        if verdict is None:
            with self._bcrypt_lock:
                try:
                    verdict = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
                except ValueError:
                    verdict = False
            self._cache.put(key, verdict)
        return known and verdict
