"""How hard the property-based (Hypothesis) tests search: one knob for every fuzz module.

Each module names the examples of a deep search; the everyday run (``make unit``,
``make test``) takes an eighth of them, which keeps the unit tests within seconds and
still tries each property on 18 to 37 inputs, differently each run. ``make fuzz`` sets
``PKI_EXPORTER_FUZZ=deep`` and runs the fuzz modules alone at the full counts (and
``PKI_EXPORTER_FUZZ=<n>`` multiplies the deep counts by n, for a long search by hand).
A failure found either way is kept in Hypothesis' example database (``.hypothesis/``)
and tried first on the next run.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

QUICK_SHARE = 8
"""The everyday run takes one example in this many of the deep count."""


def _scale(deep: int) -> int:
    depth = os.environ.get("PKI_EXPORTER_FUZZ", "").strip()
    if depth == "deep":
        return deep
    if depth.isdigit() and int(depth) > 0:
        return deep * int(depth)
    return max(10, deep // QUICK_SHARE)


def fuzz_settings(deep_examples: int, *, health_checks: Any = (HealthCheck.too_slow,)) -> Any:
    """Hypothesis settings for ``deep_examples`` examples at full depth (see the module)."""
    return settings(
        max_examples=_scale(deep_examples),
        deadline=None,
        suppress_health_check=list(health_checks),
    )
