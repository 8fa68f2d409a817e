"""Tenant sharding: which of the configured tenants this replica exports.

A managed-service provider may watch hundreds of tenants, more than one process can
refresh within the interval. ``--tenant-shard I/N`` lets N replicas share one config file:
replica I exports only the tenants whose shard is I, so every tenant is exported by exactly
one replica and Prometheus scrapes them all.

A tenant's shard is ``int(sha256(name)[:8]) % N`` of its configured ``name`` (the
``tenant`` label). It depends on nothing else: reordering the config, restarting a replica
or adding a tenant never moves another tenant, and every replica computes the same answer
on its own, with no coordination. Only a change of N moves tenants (about (N-1)/N of them,
as with any modulo scheme). With few tenants per replica the shares are uneven (a hash is
not a round robin); ``--config.check --tenant-shard I/N`` shows each replica's share.

``auto/N`` takes I from the pod ordinal of a Kubernetes StatefulSet: its pods are named
``<statefulset>-<ordinal>``, read from ``POD_NAME`` (set it from ``metadata.name`` with the
downward API) or else the host name, which a StatefulSet pod has set to its own name.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from pki_exporter.config.model import Config

MAX_SHARDS = 1024
POD_NAME_ENV = "POD_NAME"
_SPEC = re.compile(r"(auto|\d{1,4})/(\d{1,4})", re.ASCII)
_ORDINAL = re.compile(r".*-(\d{1,9})", re.ASCII)


class ShardError(ValueError):
    """A ``--tenant-shard`` value that cannot be used; the message is one line."""


def shard_of(tenant_name: str, count: int) -> int:
    """The shard (0 .. count-1) of a tenant, from its configured name alone."""
    digest = hashlib.sha256(tenant_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Replica ``index`` of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index}/{self.count}: need 0 <= I < N <= {MAX_SHARDS}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, tenant_name: str) -> bool:
        return shard_of(tenant_name, self.count) == self.index

    def select(self, config: Config) -> Config:
        """The config with only this shard's tenants (a warning when it holds none)."""
        kept = tuple(t for t in config.tenants if self.owns(t.name))
        warnings = config.warnings
        if config.tenants and not kept:
            warnings = (
                *warnings,
                f"tenant shard {self}: none of the {len(config.tenants)} configured tenants "
                "falls to this shard; it exports no certificate metrics",
            )
        return msgspec.structs.replace(config, tenants=kept, warnings=warnings)


def parse_shard(
    text: str,
    environ: Mapping[str, str] | None = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> Shard:
    """``I/N`` or ``auto/N`` (I = the StatefulSet pod ordinal) -> a `Shard`."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ShardError(f"expected I/N or auto/N, like 0/3, got {text!r}")
    count = int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"{text}: N must be between 1 and {MAX_SHARDS}")
    if match.group(1) != "auto":
        index = int(match.group(1))
        if index >= count:
            raise ShardError(f"{text}: I must be below N (shards are numbered 0 to {count - 1})")
        return Shard(index, count)
    env = os.environ if environ is None else environ
    source = POD_NAME_ENV if env.get(POD_NAME_ENV) else "the host name"
    name = env.get(POD_NAME_ENV) or hostname()
    ordinal = _ORDINAL.fullmatch(name)
    if ordinal is None:
        raise ShardError(
            f"{text}: cannot read a pod ordinal from {source} {name!r} "
            "(expected a StatefulSet pod name ending in -<number>)"
        )
    index = int(ordinal.group(1))
    if index >= count:
        raise ShardError(
            f"{text}: pod ordinal {index} (from {source} {name!r}) is not below {count}; "
            "the StatefulSet has more replicas than shards"
        )
    return Shard(index, count)
