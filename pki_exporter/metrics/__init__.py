"""Snapshots -> metric families and their exposition."""
