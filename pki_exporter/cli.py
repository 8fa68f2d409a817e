"""Command line: flags -> a running exporter (placeholder until the exporter lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("pki-exporter: not built yet")
