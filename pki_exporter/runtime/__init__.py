"""Process-wide services: clock, logs, CPU turns, sharding."""
