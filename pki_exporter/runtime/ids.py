"""Identifiers the whole exporter checks the same way: Entra and Graph GUIDs."""

from __future__ import annotations

import re
from typing import Final

#: A GUID in lower case, as the config keeps it (msgspec patterns of config/model.py).
GUID_PATTERN: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: A GUID as Entra ID and Graph write it (tenant, client and CA ids), either case.
GUID: Final = re.compile(GUID_PATTERN, re.IGNORECASE)


def is_guid(text: str) -> bool:
    """Whether the whole of `text` is one GUID (no surrounding space, no trailing newline)."""
    return GUID.fullmatch(text) is not None
