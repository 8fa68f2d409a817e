"""Downloading CRLs and CA certificates: the allow-list, the caps, retries, no credential.

The URLs come from Graph data, which is input, not an instruction: a host outside
``crl.allowed_hosts`` is never contacted (checked before any connection, and again for
every redirect), a body larger than ``crl.max_size`` is cut off while it streams, and no
request carries an Authorization header, a Graph token or any other credential. Conditional
requests (``If-None-Match`` / ``If-Modified-Since``) let an unchanged CRL cost a 304.
Every way a download can fail ends as a ``CRLFailure`` with one of the spec's reasons.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from pki_exporter.config.model import CRLConfig, TenantConfig
from pki_exporter.crl.model import CRLFailure, Validators
from pki_exporter.graph.client import USER_AGENT, ssl_context

ATTEMPTS = 3
"""Tries per download: 5xx, timeouts and network errors are retried, 4xx are not."""
BACKOFF = 1.0
"""Seconds before the second try, doubled before each later one."""
REDIRECTS = 3
"""Redirects followed at most (each one's host checked against the allow-list)."""
_CHUNK = 64 * 1024


def crl_client(tenant: TenantConfig | None, crl: CRLConfig) -> httpx.Client:
    """The one HTTP client of a tenant's CRL and CA-certificate downloads.

    Built here only, from the tenant's config, so that its outbound settings (``ca_bundle``,
    and the tenant's proxy) apply to CRLs exactly as to Graph. No auth, no cookies kept
    across hosts that matter, identity encoding so that ``size`` is the size as served.
    """
    return httpx.Client(
        verify=ssl_context(tenant.ca_bundle if tenant is not None else None),
        timeout=httpx.Timeout(crl.timeout),
        headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"},
        follow_redirects=False,
        trust_env=True,
        auth=None,
    )


def host_allowed(host: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` is in the allow-list: equal to an entry, or a subdomain of a
    ``*.domain`` entry (not ``domain`` itself). Case and a trailing dot do not matter;
    the port is not matched."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    for entry in patterns:
        pattern = entry.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, patterns: tuple[str, ...]) -> None:
    """Refuse (reason ``refused``) a URL that is not http(s) or whose host is not allowed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise CRLFailure("refused", "not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise CRLFailure("refused", f"scheme {parts.scheme[:16]!r} is not http or https")
    if not host_allowed(host, patterns):
        raise CRLFailure("refused", f"host {str(host)[:100]!r} is not in crl.allowed_hosts")
    if parts.username is not None or parts.password is not None:
        raise CRLFailure("refused", "a URL with credentials is not fetched")


@dataclass(frozen=True, slots=True)
class Download:
    """A body that came back whole, and what a conditional request sends next time.
    ``body`` is None for a 304 (the last good result still stands)."""

    body: bytes | None
    validators: Validators


class Fetcher:
    """Downloads under ``crl`` config's caps; one per tenant (its client), shared by threads."""

    def __init__(
        self,
        client: httpx.Client,
        config: CRLConfig,
        *,
        stop: threading.Event | None = None,
        backoff: float = BACKOFF,
        attempts: int = ATTEMPTS,
    ) -> None:
        """``stop`` ends a backoff wait at once (shutdown); ``backoff`` 0 in tests."""
        self._client = client
        self._config = config
        self._stop = stop or threading.Event()
        self._backoff = backoff
        self._attempts = attempts

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, validators: Validators | None = None) -> Download:
        """GET ``url`` (retried), or raise ``CRLFailure`` with the reason of the last try."""
        check_url(url, self._config.allowed_hosts)
        failure: CRLFailure | None = None
        for attempt in range(self._attempts):
            if attempt and self._stop.wait(self._backoff * 2 ** (attempt - 1)):
                break
            try:
                return self._get_once(url, validators)
            except CRLFailure as exc:
                if exc.reason not in ("http_5xx", "timeout", "network"):
                    raise
                failure = exc
        assert failure is not None
        raise failure

    def _get_once(self, url: str, validators: Validators | None) -> Download:
        headers: dict[str, str] = {}
        if validators is not None:
            if validators.etag:
                headers["If-None-Match"] = validators.etag
            if validators.last_modified:
                headers["If-Modified-Since"] = validators.last_modified
        deadline = time.monotonic() + self._config.timeout
        for _ in range(REDIRECTS + 1):
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if status in (301, 302, 303, 307, 308):
                        location = response.headers.get("location")
                        if not location:
                            raise CRLFailure("http_4xx", f"HTTP {status} without a Location")
                        url = urljoin(url, location)
                        check_url(url, self._config.allowed_hosts)
                        continue
                    if status == 304 and validators is not None:
                        return Download(None, validators)
                    if status >= 500:
                        raise CRLFailure("http_5xx", f"HTTP {status}")
                    if status >= 300:
                        raise CRLFailure("http_4xx", f"HTTP {status}")
                    body = self._read(response, deadline)
                    return Download(
                        body,
                        Validators(
                            etag=response.headers.get("etag"),
                            last_modified=response.headers.get("last-modified"),
                        ),
                    )
            except httpx.TimeoutException as exc:
                raise CRLFailure("timeout", f"timed out ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise CRLFailure("network", _first(exc)) from None
            except (httpx.InvalidURL, ValueError) as exc:  # IDNA, control characters...
                raise CRLFailure("refused", f"not a usable URL: {_first(exc)}") from None
        raise CRLFailure("http_4xx", f"more than {REDIRECTS} redirects")

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        """The body, cut off past ``max_size`` and past the request's deadline (a server
        that drips one byte per read timeout does not hold a reader forever)."""
        cap = self._config.max_size
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise CRLFailure("too_large", f"{declared} bytes, more than crl.max_size ({cap})")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_raw(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise CRLFailure("too_large", f"more than crl.max_size ({cap} bytes)")
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise CRLFailure(
                    "timeout", f"not read within crl.timeout ({self._config.timeout}s)"
                )
        return b"".join(chunks)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
