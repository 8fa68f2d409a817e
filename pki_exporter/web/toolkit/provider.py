"""The web config in force: loaded at start, re-read when its files change.

Start-up is strict (an invalid file stops the exporter with a one-line message naming the
key); a reload is forgiving (an invalid new file is reported once and the last good one
stays in force). Passwords, hashes and private keys never appear in messages or logs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping

from pki_exporter.runtime import logs
from pki_exporter.web.toolkit.auth import BasicAuth
from pki_exporter.web.toolkit.model import VERIFYING, WebConfig, WebConfigError
from pki_exporter.web.toolkit.parse import Doc, parse
from pki_exporter.web.toolkit.ratelimit import RateLimiter
from pki_exporter.web.toolkit.tls import build_context, read_tls_material
from pki_exporter.web.toolkit.watch import FileState, Reader, still_current

log = logs.get("web.toolkit")
_NOT_RELOADED = "web config not reloaded, the previous one stays in force"


def load_web_config(path: str) -> WebConfig:
    """Read and fully validate a web config file (certificates and keys included)."""
    config, _context = load(path, [])
    return config


def load(path: str, watched: list[FileState]) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Parse and validate `path`; append every file read (or tried) to `watched`."""
    doc = Doc(path)
    reader = Reader(watched)
    try:
        raw = reader.read(path)
    except OSError as e:
        raise doc.error("", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise doc.error("", "not UTF-8 text") from None
    config = parse(text, doc, os.path.dirname(path))
    if config.tls is None:
        return config, None
    material = read_tls_material(config.tls, doc, reader)
    return config, build_context(config.tls, material, doc)


class WebConfigProvider:
    """Holds the web config of a running server; re-reads the file when it changes.

    Thread-safe. Per request the server calls `authorize()` (which notices a changed file)
    and `response_headers()`; per accepted connection on a TLS port it wraps the socket
    with `current_ssl_context()`, which never touches a file (an event loop calls it), and
    has another thread call `reload_if_changed()` now and then. `ssl_context()` is the
    same with a check for changes first, for servers that wrap in a thread of their own.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._auth = BasicAuth()
        self._context: ssl.SSLContext | None = None
        self._files: tuple[FileState, ...] = ()
        if path is None:
            self._config = WebConfig(tls=None)
        else:
            watched: list[FileState] = []
            self._config, context = load(path, watched)
            self._files = tuple(watched)
            self._context = self._with_sni(context)
        self._tls_enabled = self._config.tls is not None
        # Fixed at start, as in the toolkit (a changed rate_limit needs a restart).
        limit = self._config.rate_limit
        self._limiter = RateLimiter(limit) if limit is not None else None
        for note in self._config.notes:
            logs.event(
                log, logging.WARNING, "web config differs from the toolkit", file=path, note=note
            )
        tls = self._config.tls
        if tls and tls.client_auth_type in VERIFYING and not (tls.client_ca or tls.client_ca_file):
            logs.event(
                log,
                logging.INFO,
                "client_auth_type without client_ca_file: client certificates are verified "
                "against the system's root CAs",
                file=path,
                client_auth_type=tls.client_auth_type,
            )
        if self._config.basic_auth_users and not self._tls_enabled:
            logs.event(
                log,
                logging.WARNING,
                "basic_auth_users without tls_server_config: passwords travel in clear text",
                file=path,
            )

    @property
    def tls_enabled(self) -> bool:
        """Whether the port speaks TLS; fixed at start, as in the toolkit."""
        return self._tls_enabled

    @property
    def config(self) -> WebConfig:
        """The web config in force (the last good one)."""
        return self._config

    def reload_if_changed(self) -> None:
        """Re-read the file when it, or a certificate file it names, has changed.

        A new file that is invalid is logged once (without secrets) and ignored: the last
        good config stays in force until the file changes again.
        """
        if self._path is None:
            return
        with self._lock:
            unchanged, states = still_current(self._files)
            if unchanged:
                self._files = states
                return
            watched: list[FileState] = []
            try:
                config, context = load(self._path, watched)
                if (config.tls is not None) != self._tls_enabled:
                    raise Doc(self._path).error(
                        "tls_server_config",
                        "TLS cannot be turned on or off while running; restart pki-exporter",
                    )
            except WebConfigError as e:
                logs.event(log, logging.WARNING, _NOT_RELOADED, file=self._path, error=str(e))
            except Exception as e:  # never let a reload take the server down
                logs.event(
                    log, logging.WARNING, _NOT_RELOADED, file=self._path, error=type(e).__name__
                )
            else:
                self._config = config
                self._context = self._with_sni(context)
                logs.event(log, logging.INFO, "web config reloaded", file=self._path)
            self._files = tuple(watched)

    # -- TLS

    def ssl_context(self) -> ssl.SSLContext:
        """The server-side context for the next connection (fresh after a change).

        Wrap each accepted connection with the context this returns. A listening socket
        wrapped once also follows certificate, key and client CA rotation (the context's
        `sni_callback` swaps in the newest one a reload has produced); protocol versions
        and client_auth_type then stay as they were at start.
        """
        self.reload_if_changed()
        return self.current_ssl_context()

    def current_ssl_context(self) -> ssl.SSLContext:
        """The server-side context as of the last reload, without looking at any file."""
        context = self._context
        if context is None:
            raise RuntimeError("TLS is not enabled in the web config")
        return context

    def _with_sni(self, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
        if context is not None:
            context.sni_callback = self._sni_callback
        return context

    def _sni_callback(
        self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, used: ssl.SSLContext
    ) -> None:
        # No reload here: the handshake may run on an event loop, which must not wait for
        # files. The context swapped in is the newest one a reload has produced.
        try:
            current = self._context
            if current is not None and current is not used:
                conn.context = current
        except Exception as e:  # an exception here would abort the handshake obscurely
            logs.event(
                log,
                logging.ERROR,
                "web config: cannot switch to the new TLS context",
                error=f"{type(e).__name__}: {e}",
            )

    # -- HTTP

    def authorize(self, authorization: str | None) -> bool:
        """Check an `Authorization` header against the current file's basic_auth_users.

        True when no users are configured; see `BasicAuth.check` for the rest.
        """
        self.reload_if_changed()
        return self._auth.check(self._config.basic_auth_users, authorization)

    def allow_request(self) -> bool:
        """Whether `rate_limit` lets one more request through now (always, without one)."""
        return self._limiter is None or self._limiter.allow()

    def response_headers(self) -> Mapping[str, str]:
        """`http_server_config.headers` of the config in force, to add to every response."""
        return self._config.headers
