"""Identifiers the whole exporter checks the same way: Entra and Graph GUIDs."""

from __future__ import annotations

import re
from typing import Final

#: A GUID as Entra ID and Graph write it (tenant, client and CA ids), either case.
GUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_guid(text: str) -> bool:
    """Whether the whole of `text` is one GUID (no surrounding space, no trailing newline)."""
    return GUID.fullmatch(text) is not None
