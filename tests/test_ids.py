"""pki_exporter.runtime.ids: the one GUID pattern of config and Graph client."""

from __future__ import annotations

import pytest

from pki_exporter.runtime.ids import is_guid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0a000000-0000-4000-8000-00000000000a", True),
        ("0A000000-0000-4000-8000-00000000000A", True),
        ("0a000000-0000-4000-8000-00000000000a\n", False),
        (" 0a000000-0000-4000-8000-00000000000a", False),
        ("0a000000000040008000000000000000000a", False),
        ("0a000000-0000-4000-8000-00000000000g", False),
        ("{0a000000-0000-4000-8000-00000000000a}", False),
        ("０a000000-0000-4000-8000-00000000000a", False),  # a full-width digit
        ("", False),
    ],
)
def test_is_guid(text: str, expected: bool) -> None:
    assert is_guid(text) is expected
