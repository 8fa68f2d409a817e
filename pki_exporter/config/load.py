"""Where the config file is read: YAML text -> a frozen, typed `Config`.

Every problem is a `ConfigError` of one line, ``<key path>: <what was expected>``
(``tenants[0].client_id: not a GUID``), so that ``--config.check``, a refused start and a
refused reload say the same thing. Two steps: `read_yaml`, the exporter's one YAML reader
(the web config's too), refuses a key written twice in a mapping; `_Walk` then walks the
document along the types of `model` (fields, `Meta` constraints, readers, ``__post_init__``
rules), words every message itself and goes on after a problem, so that one pass finds
them all (`decode`; `parse_config` raises the first). A key set to ``null`` is the same as
leaving it out. No secret's value ever enters a message. `load_config` resolves relative
file paths from the file's directory, as Prometheus does; `parse_config` keeps them.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal, Union

import msgspec
import yaml

from pki_exporter.config.model import (
    ClientSecretInline,
    Config,
    Invalid,
    TenantConfig,
    duration_seconds,
)
from pki_exporter.config.yamlfile import DuplicateKeyError, compose_yaml, join, read_yaml

__all__ = [
    "Config",
    "ConfigError",
    "Decoded",
    "DuplicateKeyError",
    "TenantConfig",
    "compose_yaml",
    "decode",
    "decode_file",
    "file_keys",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_yaml",
]
MAX_FILE_BYTES = 1 << 20  # a config file, a secret or a certificate is far smaller


class ConfigError(Exception):
    """An invalid config: `path` is empty for the document as a whole (YAML, empty file)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        text = f"{path}: {message}" if path else message
        super().__init__(" ".join(text.splitlines()))


@dataclass(slots=True)
class Decoded:
    """One pass over a file: the config (None if it has problems), every problem in the
    order of the file's keys, and each tenant valid on its own (for `check`)."""

    config: Config | None
    errors: list[ConfigError]
    tenants: list[tuple[str, TenantConfig]] = field(default_factory=list)


def load_config(path: str) -> Config:
    """The valid config in the file at `path`, or its first `ConfigError`."""
    return _first(decode_file(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    """The valid config in `text` (`source` only recorded), or its first `ConfigError`."""
    return _first(decode(text, source))


def parse_duration(text: str | int | float, path: str) -> float:
    """`model.duration_seconds`, its error a `ConfigError` at `path`."""
    try:
        return duration_seconds(text)
    except Invalid as exc:
        raise ConfigError(path, exc.message) from None


def decode_file(path: str) -> Decoded:
    """`decode` of the file at `path`, relative paths read from its directory; an inline
    secret in a file others can read warns. An unreadable file: one problem at `path`."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            data = handle.read(MAX_FILE_BYTES + 1)
        text = data.decode("utf-8-sig") if len(data) <= MAX_FILE_BYTES else None
    except OSError as exc:
        return Decoded(None, [ConfigError(path, f"cannot read: {os_reason(exc)}")])
    except UnicodeDecodeError:
        return Decoded(None, [ConfigError(path, "cannot read: not UTF-8 text")])
    if text is None:
        return Decoded(None, [ConfigError(path, "cannot read: larger than 1 MiB")])
    return decode(text, path, os.path.dirname(os.path.abspath(path)), mode)


def decode(
    text: str, source: str = "<string>", base_dir: str | None = None, mode: int | None = None
) -> Decoded:
    """Every problem of config `text` in one pass, or the config. `base_dir`: relative file
    paths are joined to it; `mode`: the permission bits of the file it was read from."""
    try:
        document = _load_yaml(text)
    except ConfigError as exc:
        return Decoded(None, [exc])
    walk = _Walk(base_dir)
    if document is None:
        walk.fail("", "empty config; expected a mapping with a tenants list")
    elif not isinstance(document, dict):
        walk.fail("", f"expected a mapping at the top level, got {_kind(document)}")
    elif isinstance(config := walk.struct(document, Config, ""), Config):
        notes = _warnings(config, source, mode)
        return Decoded(
            msgspec.structs.replace(config, warnings=notes, source=source), [], walk.tenants
        )
    return Decoded(None, walk.errors, walk.tenants)


def _first(decoded: Decoded) -> Config:
    if decoded.config is None:
        raise decoded.errors[0]
    return decoded.config


def _warnings(config: Config, source: str, mode: int | None) -> tuple[str, ...]:
    found = config.advice()
    readers = [who for bit, who in ((0o040, "group"), (0o004, "others")) if (mode or 0) & bit]
    if readers and any(isinstance(t.credential, ClientSecretInline) for t in config.tenants):
        found.append(
            f"{source}: holds an inline client secret and is readable by "
            f"{' and '.join(readers)} (mode {mode:04o}); "
            "restrict it with chmod 600 or move the secret to client_secret_file"
        )
    return tuple(" ".join(w.splitlines()) for w in found)


# ----------------------------------------------------------------------------- the walk

_FAILED: Any = object()  # what a value with a problem decodes to


@functools.cache
def struct_fields(kind: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """`msgspec.structs.fields`, once per type: it evaluates the annotations (strings,
    under ``from __future__ import annotations``) on every call, which made a config of
    a few hundred tenants take seconds to read."""
    return msgspec.structs.fields(kind)


@functools.cache
def file_keys(kind: type[msgspec.Struct]) -> Mapping[str, Any]:
    """The keys a file may set in a mapping of `kind`: its fields and their types."""
    fields = struct_fields(kind)
    keys = {f.name: f.type for f in fields if not type_rules(f.type)[1].get("not_a_key")}
    return types.MappingProxyType(keys)


def type_rules(kind: Any) -> tuple[Any, dict[str, Any]]:
    """(the type under `Annotated` and ``| None``, its `Meta` constraints and extras)."""
    rules: dict[str, Any] = {}
    while True:
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is Annotated:
            for meta in kind.__metadata__:
                if isinstance(meta, msgspec.Meta):
                    for name in ("ge", "gt", "le", "min_length", "max_length", "pattern"):
                        if getattr(meta, name) is not None:
                            rules[name] = getattr(meta, name)
                    rules.update(meta.extra or {})
            kind = kind.__origin__
        elif origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
            kind = args[0] if args[1] is type(None) else args[1]
        else:
            return kind, rules


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


class _Walk:
    """One pass over a document: each value against its type, every problem recorded."""

    def __init__(self, base_dir: str | None) -> None:
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.tenants: list[tuple[str, TenantConfig]] = []

    def fail(self, path: str, message: str) -> Any:
        self.errors.append(ConfigError(path, message))
        return _FAILED

    def value(self, raw: Any, kind: Any, path: str) -> Any:
        base, rules = type_rules(kind)
        origin = typing.get_origin(base)
        if base is str or origin is Literal:
            if not isinstance(raw, str):
                return self.fail(path, f"expected string, got {_kind(raw)}")
            if not raw.strip():
                return self.fail(path, "must not be empty")
            if base is str and "pattern" not in rules and not raw.isprintable():
                return self.fail(path, "must not contain control or non-printable characters")
        if "read" in rules:
            try:
                raw = rules["read"](raw)
            except Invalid as exc:
                return self.fail(path, exc.message)
        if _is_struct(base):
            return self.struct(raw, base, path)
        if origin is tuple:
            return self.items(raw, typing.get_args(base)[0], rules, path)
        if origin in (Union, types.UnionType):
            return self.union(raw, typing.get_args(base), rules, path)
        if origin is Literal:
            choices = typing.get_args(base)
            return (
                raw if raw in choices else self.fail(path, f"expected one of {', '.join(choices)}")
            )
        if base is str:
            return self.text(raw, rules, path)
        if isinstance(raw, bool) is not (base is bool) or not isinstance(raw, base):
            return self.fail(path, f"expected {dict(_KIND_NAMES)[base]}, got {_kind(raw)}")
        return self.bounds(raw, rules, path)

    def text(self, raw: str, rules: dict[str, Any], path: str) -> Any:
        longest, pattern = rules.get("max_length"), rules.get("pattern")
        if longest is not None and len(raw) > longest:
            return self.fail(path, rules.get("message", f"at most {longest} characters"))
        if pattern is not None and re.search(pattern, raw) is None:
            return self.fail(path, rules["message"])
        if rules.get("file") and self.base_dir is not None and not os.path.isabs(raw):
            return os.path.join(self.base_dir, raw)
        return raw

    def bounds(self, number: float, rules: dict[str, Any], path: str) -> Any:
        show = rules.get("show", str)
        ge, gt, le = rules.get("ge"), rules.get("gt"), rules.get("le")
        low = (ge is None or number >= ge) and (gt is None or number > gt)
        if low and (le is None or number <= le):
            return number
        if isinstance(number, int) and ge is not None and le is not None:
            return self.fail(path, f"must be between {show(ge)} and {show(le)}")
        if not low:
            least = f"greater than {show(gt)}" if gt is not None else f"at least {show(ge)}"
            return self.fail(path, f"must be {least}")
        return self.fail(path, f"must be at most {show(le)}")

    def items(self, raw: Any, kind: Any, rules: dict[str, Any], path: str) -> Any:
        if not isinstance(raw, list):
            return self.fail(path, f"expected list, got {_kind(raw)}")
        if len(raw) < rules.get("min_length", 0):
            return self.fail(path, "must not be empty")
        out = [self.value(item, kind, f"{path}[{i}]") for i, item in enumerate(raw)]
        key, words = rules.get("unique", ("", None))
        seen: set[object] = set()
        for i, item in enumerate(out):
            if key and item is not _FAILED and getattr(item, key) in seen:
                out[i] = self.fail(f"{path}[{i}].{key}", words(getattr(item, key)))
            elif key and item is not _FAILED:
                seen.add(getattr(item, key))
        return _FAILED if any(item is _FAILED for item in out) else tuple(out)

    def union(self, raw: Any, members: tuple[Any, ...], rules: dict[str, Any], path: str) -> Any:
        """Tagged Structs: a mapping of one tag (the credential); else the member of the
        value's kind (``"all"`` or a list of CAs)."""
        if all(_is_struct(member) for member in members):
            return self.tagged(raw, members, path)
        for member in members:
            base = type_rules(member)[0]
            literal = typing.get_origin(base) is Literal and raw in typing.get_args(base)
            if literal or (typing.get_origin(base) is tuple and isinstance(raw, list)):
                return self.value(raw, member, path)
        return self.fail(path, rules["message"])

    def tagged(self, raw: Any, members: tuple[Any, ...], path: str) -> Any:
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {_kind(raw)}")
        kinds = {str(m.__struct_config__.tag): m for m in members}
        if self.unknown(raw, kinds, path):
            return _FAILED
        if len(raw) != 1:
            return self.fail(path, f"expected exactly one of {', '.join(kinds)}")
        ((tag, body),) = raw.items()
        kind, where = kinds[tag], join(path, tag)
        flat = getattr(kind, "body", None)  # a scalar written for the Struct's one field
        if flat is None:  # `workload_identity:` (null) is `workload_identity: {}`
            return self.struct({} if body is None else body, kind, where)
        value = self.value(body, file_keys(kind)[flat], where)
        return _FAILED if value is _FAILED else kind(**{flat: value})

    def unknown(self, raw: dict[Any, Any], known: Mapping[str, Any], path: str) -> bool:
        """Record each key of `raw` that is not `known`, with a guess; True if any."""
        for key in raw:
            if not (isinstance(key, str) and key in known):
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.fail(join(path, key), f"unknown key{hint}")
        return any(not (isinstance(key, str) and key in known) for key in raw)

    def struct(self, raw: Any, kind: type[msgspec.Struct], path: str) -> Any:
        """A mapping as `kind`: unknown keys, each field in order, then the rules across
        fields (`__post_init__`), also beside unknown keys and failed fields (then with
        their defaults, and only what it says of other fields is kept)."""
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {_kind(raw)}")
        unknown = self.unknown(raw, keys := file_keys(kind), path)
        required = {f.name for f in struct_fields(kind) if f.required}
        values: dict[str, Any] = {}
        for name, kind_of in keys.items():
            if raw.get(name) is not None:
                values[name] = self.value(raw[name], kind_of, join(path, name))
            elif name in required:
                values[name] = self.fail(join(path, name), "required")
        failed = {name for name, value in values.items() if value is _FAILED}
        try:
            made = (
                None
                if failed & required
                else kind(**{k: values[k] for k in values.keys() - failed})
            )
        except Invalid as exc:
            if not failed or re.split(r"[.\[]", exc.where)[0] not in failed | {""}:
                self.fail(_join_path(path, exc.where), exc.message)
            return _FAILED
        if isinstance(made, TenantConfig) and not (unknown or failed):
            self.tenants.append((path, made))
        return _FAILED if unknown or failed or made is None else made


def _load_yaml(text: str) -> object:
    """`read_yaml` with its errors as one-line `ConfigError`s."""
    try:
        return read_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(exc.path, f"duplicate key ({exc.where})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError("", f"{where}{what}") from None
    except yaml.YAMLError as exc:  # reader errors: bad characters, bad encoding
        raise ConfigError("", f"invalid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise ConfigError("", "invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # impossible dates, overlong integers
        raise ConfigError("", f"invalid YAML value: {_first_line(exc)}") from None


# ----------------------------------------------------------------------------- words


def _kind(value: object) -> str:
    """The YAML name of a value's type, as shown in ``expected X, got Y``."""
    for kind, name in _KIND_NAMES:
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


_KIND_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int in Python, never in a config
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (dict, "mapping"),
    (list, "list"),
    (bytes, "binary"),
    (date, "timestamp"),
    (set, "set"),
)


def _join_path(path: str, below: str) -> str:
    """`path` and a path below it as `Invalid` gives it (``x``, ``x[1].y``, or empty)."""
    if not below or not path:
        return path or below
    return f"{path}{below}" if below.startswith("[") else f"{path}.{below}"


def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=not text.isprintable())


def os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return str(exc).partition("\n")[0] or type(exc).__name__
