"""Noticing that a file has changed: a `stat()` per request, its content when the clock is coarse.

Like the toolkit, the web config is re-read while the server runs; unlike the toolkit,
it is not parsed on every request: the state of each file read tells when to read again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# A file modified less than this before we looked at it may change again without its
# mtime moving (coarse file-system clocks): its content is compared until the window ends.
_RACY_NS: Final = 2_000_000_000


@dataclass(frozen=True, slots=True)
class FileState:
    """What a file looked like when it was read; tells whether it has changed since."""

    path: str
    stat: tuple[int, ...] | None  # None: missing or unreadable
    digest: bytes | None
    seen_ns: int

    @property
    def racy(self) -> bool:
        return self.stat is not None and self.seen_ns - self.stat[0] < _RACY_NS


def _stat_key(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class Reader:
    """Reads files and remembers each one's state, so that a change can be noticed."""

    def __init__(self, watched: list[FileState]) -> None:
        self.watched = watched

    def read(self, path: str) -> bytes:
        seen_ns = time.time_ns()
        key = _stat_key(path)  # before reading: a later write shows as a change
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.watched.append(FileState(path, None, None, seen_ns))
            raise
        self.watched.append(FileState(path, key, hashlib.sha256(data).digest(), seen_ns))
        return data


def still_current(states: Sequence[FileState]) -> tuple[bool, tuple[FileState, ...]]:
    """(unchanged?, states to remember): racy files have their content compared."""
    now = time.time_ns()
    updated: list[FileState] = []
    for state in states:
        key = _stat_key(state.path)
        if key != state.stat:
            return False, tuple(states)
        if state.racy:
            if _digest(state.path) != state.digest:
                return False, tuple(states)
            state = FileState(state.path, key, state.digest, now)  # noqa: PLW2901
        updated.append(state)
    return True, tuple(updated)
