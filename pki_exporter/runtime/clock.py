"""The wall clock, in one place so that tests can freeze it.

Certificate arithmetic (what expires when) needs the wall clock; scheduling uses
`time.monotonic()` and never comes here. Setting ``PKI_EXPORTER_FAKE_NOW`` (RFC 3339 or
epoch seconds) freezes the clock so that end-to-end tests can assert exact values.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

ENV_VAR = "PKI_EXPORTER_FAKE_NOW"


def _parse(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.timestamp()


_frozen: float | None = _parse(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None


def now() -> float:
    """Seconds since the epoch, frozen when ``PKI_EXPORTER_FAKE_NOW`` is set."""
    return _frozen if _frozen is not None else time.time()


def freeze(value: float | None) -> None:
    """Freeze (or, with None, release) the clock; for tests and the demo only."""
    global _frozen  # noqa: PLW0603
    _frozen = value
