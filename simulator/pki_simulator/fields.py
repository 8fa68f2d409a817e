"""Typed fields from JSON or CLI values: what the control API and the CLI read."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any


def convert_fields(
    data: Mapping[str, Any],
    converters: Mapping[str, Callable[[Any], Any]],
    what: str,
    nullable: Container[str] = (),
) -> dict[str, Any]:
    """``data`` converted key by key; an unknown key or a value its converter refuses is a
    one-line ValueError naming ``what`` and the key. A None of a ``nullable`` key is left out
    (the default applies)."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in converters:
            raise ValueError(f"{what}: unknown field {key!r}")
        if value is None and key in nullable:
            continue
        try:
            kwargs[key] = converters[key](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} {key}: {value!r} is not valid") from exc
    return kwargs
