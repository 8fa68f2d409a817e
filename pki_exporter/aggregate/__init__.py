"""Leaf records -> per-CA aggregates (certificates, devices)."""
