"""What a simulated tenant holds: frozen specs from which the data set is generated.

A spec is a small, hashable description; the records themselves are produced on demand
(`dataset.py`) so that a million certificates cost a few bytes of spec, not a gigabyte of
objects, until they are served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Status mix of leaf certificates. ``None`` means ``certificateStatus: null``.
DEFAULT_STATUS_SHARES: tuple[tuple[str | None, float], ...] = (
    ("active", 0.62),
    ("revoked", 0.14),
    ("expired", 0.22),
    ("unknown", 0.02),
)

#: Platform mix (the documented ``devicePlatform`` strings).
DEFAULT_PLATFORM_SHARES: tuple[tuple[str | None, float], ...] = (
    ("Windows10AndLater", 0.38),
    ("iOS", 0.20),
    ("AndroidWorkProfile", 0.14),
    ("MacOS", 0.12),
    ("AndroidForWork", 0.06),
    ("Android", 0.05),
    ("AndroidAOSP", 0.03),
    ("Unknown", 0.02),
)

CA_STATUSES = (
    "unknown",
    "active",
    "paused",
    "revoked",
    "signingPending",
    "unknownFutureValue",
    "expired",
)


def _check_shares(name: str, shares: tuple[tuple[str | None, float], ...]) -> None:
    if not shares:
        raise ValueError(f"{name}: must not be empty")
    if any(weight < 0 for _, weight in shares) or sum(w for _, w in shares) <= 0:
        raise ValueError(f"{name}: weights must be >= 0 and sum to more than 0")


@dataclass(frozen=True)
class CASpec:
    """One Cloud PKI CA and the shape of its leaf certificates.

    Dates are given in days relative to the data set's anchor so that one spec stays
    meaningful whatever "now" is. ``page_sizes``, when given, fixes every page of the
    leaf action (0 = an empty page that still carries a ``nextLink``) and must add up to
    ``certificates``.
    """

    id: str
    display_name: str
    certificates: int = 1000
    page_size: int = 1000
    page_sizes: tuple[int, ...] | None = None
    status: str | None = "active"
    type: str | None = "issuingCertificationAuthority"
    key_size: str | None = "rsa2048"
    hashing_algorithm: str | None = "sha256"
    key_platform: str | None = "software"
    common_name: str | None = None
    issuer_common_name: str | None = None
    valid_from_days: float = -365.0
    valid_until_days: float = 1460.0
    certificate_validity_days: int = 365
    status_shares: tuple[tuple[str | None, float], ...] = DEFAULT_STATUS_SHARES
    platform_shares: tuple[tuple[str | None, float], ...] = DEFAULT_PLATFORM_SHARES
    #: share of records carrying one of the real-tenant quirks (see ``dataset.QUIRKS``)
    quirk_share: float = 0.02
    #: share of *active* certificates whose end falls within 7 days after the anchor
    #: (renewal that has stopped working)
    broken_renewal_share: float = 0.0
    #: share of active certificates inside their renewal window (the last 20 % of their
    #: validity) whose device renewed: the next record of the page is then the device's
    #: new certificate (same deviceId, issued inside that window)
    renewed_share: float = 0.8
    #: share of records issued to no device (``deviceId`` and ``deviceName`` null)
    no_device_share: float = 0.01
    version_number: int = 1
    #: the CA was renewed: its current version (``max(2, version_number)``) began at
    #: ``valid_from_days``; leaves issued before belong to the previous version, with its
    #: own key, certificate and CRL (choose ``valid_from_days`` within the leaves' validity,
    #: e.g. -90, so that both versions have unexpired certificates)
    renewed: bool = False

    def __post_init__(self) -> None:
        if not self.id or "/" in self.id:
            raise ValueError(f"CASpec.id: not a usable id: {self.id!r}")
        if self.certificates < 0:
            raise ValueError("CASpec.certificates: must be >= 0")
        if self.page_size < 1:
            raise ValueError("CASpec.page_size: must be >= 1")
        if self.page_sizes is not None:
            if any(size < 0 for size in self.page_sizes) or not self.page_sizes:
                raise ValueError("CASpec.page_sizes: sizes must be >= 0, at least one page")
            if sum(self.page_sizes) != self.certificates:
                raise ValueError(
                    f"CASpec.page_sizes: sum {sum(self.page_sizes)} != certificates "
                    f"{self.certificates}"
                )
        if self.certificate_validity_days < 1:
            raise ValueError("CASpec.certificate_validity_days: must be >= 1")
        _check_shares("CASpec.status_shares", self.status_shares)
        _check_shares("CASpec.platform_shares", self.platform_shares)
        for name in ("quirk_share", "broken_renewal_share", "renewed_share", "no_device_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CASpec.{name}: must be within [0, 1]")

    @property
    def pages(self) -> tuple[int, ...]:
        """Record count of each page of the leaf action; always at least one page."""
        if self.page_sizes is not None:
            return self.page_sizes
        if self.certificates == 0:
            return (0,)
        full, rest = divmod(self.certificates, self.page_size)
        return (self.page_size,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class TenantSpec:
    """One Entra ID tenant with one app registration that may read its CAs.

    ``client_secret`` None lets the simulator derive a throwaway secret from the seed, so
    that restarting ``simulate`` with the same seed keeps a pasted config working.
    """

    tenant_id: str
    client_id: str
    name: str
    cas: tuple[CASpec, ...] = ()
    client_secret: str | None = None
    domain: str | None = None
    federated_subject: str = "system:serviceaccount:monitoring:pki-exporter"

    def __post_init__(self) -> None:
        if not isinstance(self.cas, tuple):
            object.__setattr__(self, "cas", tuple(self.cas))
        ids = [ca.id.lower() for ca in self.cas]
        if len(set(ids)) != len(ids):
            raise ValueError(f"TenantSpec {self.name}: duplicate CA ids")
        if not self.tenant_id or "/" in self.tenant_id:
            raise ValueError(f"TenantSpec.tenant_id: not a usable id: {self.tenant_id!r}")

    @property
    def user_domain(self) -> str:
        return self.domain or f"{self.name}.onmicrosoft.com"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the simulated Graph serves, reproducible from ``seed``.

    ``anchor`` is the instant the dates are generated around (a tz-aware "now"): the
    ground truth is exact for any ``now``, but the mix of expiring certificates is
    designed relative to the anchor.
    """

    seed: int
    anchor: datetime
    tenants: tuple[TenantSpec, ...] = field(default_factory=tuple)
    token_lifetime: int = 3600
    ca_page_size: int = 100

    def __post_init__(self) -> None:
        if self.anchor.tzinfo is None or self.anchor.utcoffset() is None:
            raise ValueError("DatasetSpec.anchor: must be timezone-aware")
        if not isinstance(self.tenants, tuple):
            object.__setattr__(self, "tenants", tuple(self.tenants))
        ids = [t.tenant_id.lower() for t in self.tenants]
        if len(set(ids)) != len(ids):
            raise ValueError("DatasetSpec.tenants: duplicate tenant ids")
        if self.token_lifetime < 1:
            raise ValueError("DatasetSpec.token_lifetime: must be >= 1 second")
        if self.ca_page_size < 1:
            raise ValueError("DatasetSpec.ca_page_size: must be >= 1")

    @classmethod
    def default(
        cls,
        seed: int = 1,
        anchor: datetime | None = None,
        tenants: int = 1,
        cas: int = 3,
        certificates: int = 1000,
        **kwargs: Any,
    ) -> DatasetSpec:
        """The realistic generated data set (`dataset.generate_spec`), as a spec to edit."""
        from pki_simulator.dataset import generate_spec

        return generate_spec(seed, tenants, cas, certificates, anchor, **kwargs)
