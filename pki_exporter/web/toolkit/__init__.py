"""The exporter-toolkit web config (`--web.config.file`): TLS, basic auth, response headers.

The file format is the one every Prometheus exporter reads (prometheus/exporter-toolkit,
docs/web-configuration.md). Where things are:

- `model`: the vocabulary (versions, ciphers, curves, headers) and the value types;
- `parse`: the YAML file to a `WebConfig`, one-line errors naming the key;
- `watch`: the state of each file read, to notice a change without re-parsing;
- `tls`: certificate material, the server `SSLContext`, SAN checks, plain HTTP on TLS;
- `auth`: basic auth with bcrypt and a verdict cache;
- `ratelimit`: the `rate_limit` token bucket;
- `provider`: the config in force, re-read when its files change (`WebConfigProvider`).
"""

from pki_exporter.web.toolkit.model import (
    ALLOWED_HEADERS,
    CIPHER_SUITES,
    CLIENT_AUTH_TYPES,
    CURVES,
    HTTP_ON_HTTPS_RESPONSE,
    TLS_VERSIONS,
    RateLimit,
    TLSServerConfig,
    WebConfig,
    WebConfigError,
)
from pki_exporter.web.toolkit.provider import WebConfigProvider, load_web_config
from pki_exporter.web.toolkit.ratelimit import RateLimiter
from pki_exporter.web.toolkit.tls import (
    ClientCertificateRejected,
    looks_like_plain_http,
)

__all__ = [
    "ALLOWED_HEADERS",
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "HTTP_ON_HTTPS_RESPONSE",
    "TLS_VERSIONS",
    "ClientCertificateRejected",
    "RateLimit",
    "RateLimiter",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "WebConfigProvider",
    "load_web_config",
    "looks_like_plain_http",
]
