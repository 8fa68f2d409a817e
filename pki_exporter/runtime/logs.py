"""Logging in logfmt or JSON, with secrets scrubbed on the way out.

Code never logs a secret on purpose; the redaction here is the second line of defence:
every secret the process reads (client secrets, passphrases, federated tokens, access
tokens) is registered, and any log line that would contain one shows ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, TextIO

_MAX_SECRETS = 256
_secrets: OrderedDict[str, None] = OrderedDict()
_secrets_lock = threading.Lock()
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")

LOGGER_NAME = "pki_exporter"
#: Prometheus' words (go-kit/slog): "warn", not Python's "warning"; "error" for CRITICAL too.
_LEVELS = {logging.WARNING: "warn", logging.CRITICAL: "error"}


def register_secret(value: str) -> None:
    """Remember a secret so that no log line can carry it (bounded: tokens rotate)."""
    if len(value) < 6:
        return
    with _secrets_lock:
        _secrets[value] = None
        _secrets.move_to_end(value)
        while len(_secrets) > _MAX_SECRETS:
            _secrets.popitem(last=False)


def redact(text: str) -> str:
    """The text with every registered secret, bearer token and JWT replaced."""
    with _secrets_lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER.sub(r"\1[REDACTED]", text)
    return _JWT.sub("[REDACTED]", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": _LEVELS.get(record.levelno, record.levelname.lower()),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            fields[key] = redact(str(value)) if isinstance(value, str) else value
    if record.exc_info and record.levelno >= logging.ERROR:
        fields["exc"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


_BARE = re.compile(r"^[^\s=\"]+$")


def _logfmt_value(value: Any) -> str:
    text = "" if value is None else str(value)
    if text and _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Configure the root logger once, for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak at WARNING at most: their debug lines carry request details.
    for noisy in ("msal", "urllib3", "httpx", "httpcore", "requests"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured key/value fields."""
    logger.log(level, msg, extra={"fields": fields})
