"""The web config in force: loaded at start, re-read when its files change.

Start-up is strict (an invalid file stops the exporter with a one-line message naming the
key); a reload is forgiving (an invalid new file is reported once and the last good one
stays in force). Passwords, hashes and private keys never appear in messages or logs.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Mapping

from pki_exporter.runtime import logs
from pki_exporter.web.toolkit.auth import BasicAuth
from pki_exporter.web.toolkit.model import VERIFYING, WebConfig, WebConfigError
from pki_exporter.web.toolkit.parse import Doc, parse
from pki_exporter.web.toolkit.ratelimit import RateLimiter
from pki_exporter.web.toolkit.tls import (
    answer_plain_http,
    build_context,
    looks_like_plain_http,
    read_tls_material,
)
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
    and `response_headers()`; per accepted connection on a TLS port, `accept_tls()`, or
    `ssl_context().wrap_socket(sock, server_side=True)` itself.
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
        `sni_callback` swaps in the newest one); protocol versions and client_auth_type
        then stay as they were at start.
        """
        self.reload_if_changed()
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
        try:
            self.reload_if_changed()
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

    def accept_tls(self, sock: socket.socket, timeout: float = 10.0) -> ssl.SSLSocket | None:
        """Turn an accepted TCP connection into a TLS one, in the connection's own thread.

        Answers a plain-HTTP request the way Go does (400, "Client sent an HTTP request to
        an HTTPS server.") and closes; closes on a failed handshake (which includes a
        client certificate without an allowed SAN). Returns the TLS socket with its
        previous timeout, or None when the connection is done with (it is then closed).
        """
        previous_timeout = sock.gettimeout()
        try:
            sock.settimeout(timeout)
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                sock.close()
                return None
            if looks_like_plain_http(first):
                answer_plain_http(sock)
                return None
            conn = self.ssl_context().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            logs.event(log, logging.DEBUG, "connection closed before TLS", error=str(e))
            sock.close()
            return None
        try:
            conn.do_handshake()
            conn.settimeout(previous_timeout)
        except (OSError, ValueError) as e:
            logs.event(log, logging.DEBUG, "TLS handshake failed", error=str(e))
            conn.close()
            return None
        return conn

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
