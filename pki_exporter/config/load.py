"""Where the config file is read: YAML text -> a frozen, typed `Config`.

Every problem is a `ConfigError` whose text is one line, ``<key path>: <what was expected>``
(``tenants[0].client_id: not a GUID``), so that ``--config.check``, a refused start and a
refused reload all say the same thing. The rules are the spec's "Config file" section.

Two steps:

1. `read_yaml` / `compose_yaml`: the one YAML reader of the exporter (this file and the web
   config). It refuses a key written twice in one mapping (``tenants[0].name: duplicate
   key``) instead of silently keeping the last one.
2. `_Walk`: the document, walked along the types of `model` (their fields, `Meta`
   constraints, readers and ``__post_init__`` rules). It words every message itself and
   goes on after a problem, so that one pass finds them all: `parse_config` raises the
   first, `decode` returns them all (``--config.check``). A key set to ``null`` is the same
   as leaving it out.

No value of a secret (inline client secret, file contents) ever enters a message.
`load_config` resolves relative file paths against the config file's directory, as
Prometheus does; `parse_config` leaves them as written. What looks outside the file
(environment variables, secret and certificate files) is in `check`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import types
import typing
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

__all__ = [
    "Config",
    "ConfigError",
    "DuplicateKeyError",
    "TenantConfig",
    "compose_yaml",
    "decode",
    "file_keys",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_yaml",
]


class ConfigError(Exception):
    """An invalid config; ``str(error)`` is one line: ``<key path>: <message>``.

    ``path`` is empty for problems of the document as a whole (YAML syntax, empty file).
    """

    path: str
    message: str

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        text = f"{path}: {message}" if path else message
        super().__init__(" ".join(text.splitlines()))


MAX_FILE_BYTES = 1 << 20  # a config file, a secret or a certificate is far smaller
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INLINE_ADVICE = (
    "secret written inline in the config file; use client_secret_env or client_secret_file"
)

# ----------------------------------------------------------------------------- entry points


@dataclass(slots=True)
class Decoded:
    """What one pass over a file found: the config (None when it has problems), every
    problem in the order of the file's keys, and each tenant that is valid on its own
    (its path and value), so that ``--config.check`` can look outside the file for it."""

    config: Config | None
    errors: list[ConfigError]
    tenants: list[tuple[str, TenantConfig]] = field(default_factory=list)


def load_config(path: str) -> Config:
    """Read and validate the file at `path`; relative paths inside it are resolved from its
    directory. An unreadable file is a `ConfigError` on `path`."""
    return _first(decode_file(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate config text; `source` is only recorded (file paths stay as written)."""
    return _first(decode(text, source))


def parse_duration(text: str | int | float, path: str) -> float:
    """`model.duration_seconds`, its error a `ConfigError` at `path`."""
    try:
        return duration_seconds(text)
    except Invalid as exc:
        raise ConfigError(path, exc.message) from None


def decode_file(path: str) -> Decoded:
    """`decode` of the file at `path` (relative paths resolved from its directory; an
    inline secret in a file others can read warns). Unreadable: one error at `path`."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return Decoded(None, [ConfigError(path, f"cannot read: {os_reason(exc)}")])
    if len(data) > MAX_FILE_BYTES:
        return Decoded(None, [ConfigError(path, "cannot read: larger than 1 MiB")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Decoded(None, [ConfigError(path, "cannot read: not UTF-8 text")])
    return decode(text, path, os.path.dirname(os.path.abspath(path)), mode)


def decode(
    text: str, source: str = "<string>", base_dir: str | None = None, mode: int | None = None
) -> Decoded:
    """Every problem of config `text` in one pass, and the config when there is none.
    `base_dir`: relative file paths are joined to it; `mode`: the file's permission bits."""
    try:
        document = _load_yaml(text)
    except ConfigError as exc:
        return Decoded(None, [exc])
    walk = _Walk(base_dir)
    if document is None:
        walk.fail("", "empty config; expected a mapping with a tenants list")
    elif not isinstance(document, dict):
        walk.fail("", f"expected a mapping at the top level, got {_kind(document)}")
    else:
        config = walk.struct(document, Config, "")
        if isinstance(config, Config) and not walk.errors:
            warnings = _warnings(config, source, mode)
            done = msgspec.structs.replace(config, warnings=warnings, source=source)
            return Decoded(done, [], walk.tenants)
    return Decoded(None, walk.errors, walk.tenants)


def _first(decoded: Decoded) -> Config:
    if decoded.config is None:
        raise decoded.errors[0]
    return decoded.config


def _warnings(config: Config, source: str, mode: int | None) -> tuple[str, ...]:
    """What works but should not be: a short interval, a secret written in the file (and
    louder, a secret in a file that others can read)."""
    found: list[str] = []
    interval = config.refresh.interval
    if 0 < interval < 60:
        short = f"{interval:g}s" if interval == int(interval) else f"{round(interval * 1000)}ms"
        found.append(
            f"refresh.interval: {short} is below one minute; Graph throttles heavy readers"
        )
    inline = [
        f"tenants[{i}].credential.client_secret: {_INLINE_ADVICE}"
        for i, tenant in enumerate(config.tenants)
        if isinstance(tenant.credential, ClientSecretInline)
    ]
    found += inline
    readers = [who for bit, who in ((0o040, "group"), (0o004, "others")) if (mode or 0) & bit]
    if inline and readers:
        found.append(
            f"{source}: holds an inline client secret and is readable by "
            f"{' and '.join(readers)} (mode {mode:04o}); "
            "restrict it with chmod 600 or move the secret to client_secret_file"
        )
    return tuple(" ".join(w.splitlines()) for w in found)


# ----------------------------------------------------------------------------- the walk

_FAILED: Any = object()  # what a value that had a problem decodes to


def file_keys(kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The keys a file may set in a mapping of `kind`: its fields and their types."""
    return {
        f.name: f.type
        for f in msgspec.structs.fields(kind)
        if not _rules(f.type)[1].get("not_a_key")
    }


def _rules(kind: Any) -> tuple[Any, dict[str, Any]]:
    """(the type under `Annotated`, its `Meta` constraints and extras merged)."""
    rules: dict[str, Any] = {}
    while typing.get_origin(kind) is Annotated:
        for meta in kind.__metadata__:
            if isinstance(meta, msgspec.Meta):
                for name in ("ge", "gt", "le", "min_length", "max_length", "pattern"):
                    if getattr(meta, name) is not None:
                        rules[name] = getattr(meta, name)
                rules.update(meta.extra or {})
        kind = kind.__origin__
    return kind, rules


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


class _Walk:
    """One pass over a document: each value against its type, each problem recorded."""

    def __init__(self, base_dir: str | None) -> None:
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.tenants: list[tuple[str, TenantConfig]] = []

    def fail(self, path: str, message: str) -> Any:
        self.errors.append(ConfigError(path, message))
        return _FAILED

    def value(self, raw: object, kind: Any, path: str) -> Any:
        base, rules = _rules(kind)
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
            before = len(self.errors)
            members = [m for m in typing.get_args(base) if m is not type(None)]
            value = self.union(raw, members, path)
            if value is _FAILED and len(self.errors) == before:
                return self.fail(path, rules["message"])  # of a value of no member's kind
            return value
        if origin is Literal:
            if raw in typing.get_args(base):
                return raw
            choices = ", ".join(typing.get_args(base))
            return self.fail(path, rules.get("message", f"expected one of {choices}"))
        if base is bool:
            ok = isinstance(raw, bool)
            return raw if ok else self.fail(path, f"expected boolean, got {_kind(raw)}")
        if base in (int, float):
            if isinstance(raw, bool) or not isinstance(raw, base):
                name = "integer" if base is int else "number"
                return self.fail(path, f"expected {name}, got {_kind(raw)}")
            return self.bounds(raw, rules, path)
        return self.text(raw, rules, path)

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

    def items(self, raw: object, kind: Any, rules: dict[str, Any], path: str) -> Any:
        if not isinstance(raw, list):
            return self.fail(path, f"expected list, got {_kind(raw)}")
        if len(raw) < rules.get("min_length", 0):
            return self.fail(path, "must not be empty")
        out = [self.value(item, kind, f"{path}[{i}]") for i, item in enumerate(raw)]
        return _FAILED if any(item is _FAILED for item in out) else tuple(out)

    def union(self, raw: object, members: list[Any], path: str) -> Any:
        """``X | None`` is X (null is handled as a left-out key); tagged Structs are a
        mapping of one tag; else the member of the value's kind (``"all"`` or a list)."""
        if len(members) == 1:
            return self.value(raw, members[0], path)
        if all(_is_struct(m) for m in members):
            return self.tagged(raw, members, path)
        for member in members:
            base = _rules(member)[0]
            if typing.get_origin(base) is Literal and raw in typing.get_args(base):
                return raw
            if typing.get_origin(base) is tuple and isinstance(raw, list):
                return self.value(raw, member, path)
        return _FAILED  # `value` words it with the union's message

    def tagged(self, raw: object, members: list[Any], path: str) -> Any:
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {_kind(raw)}")
        kinds = {str(m.__struct_config__.tag): m for m in members}
        if self.unknown(raw, kinds, path):
            return _FAILED
        if len(raw) != 1:
            return self.fail(path, f"expected exactly one of {', '.join(kinds)}")
        ((tag, body),) = raw.items()
        kind, where = kinds[tag], _join(path, tag)
        flat = getattr(kind, "body", None)  # a scalar standing for the Struct's one field
        if flat is None:  # `workload_identity:` (null) is `workload_identity: {}`
            return self.struct({} if body is None else body, kind, where)
        value = self.value(body, file_keys(kind)[flat], where)
        return _FAILED if value is _FAILED else kind(**{flat: value})

    def unknown(self, raw: dict[Any, Any], known: dict[str, Any], path: str) -> bool:
        """Record each key of `raw` that is not `known` (with a guess); True if any."""
        found = False
        for key in raw:
            if not (isinstance(key, str) and key in known):
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.fail(_join(path, key), f"unknown key{hint}")
                found = True
        return found

    def struct(self, raw: object, kind: type[msgspec.Struct], path: str) -> Any:
        """A mapping as `kind`: unknown keys, then each field in order, then the rules
        across fields (`__post_init__`), which run even beside an unknown key."""
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {_kind(raw)}")
        keys = file_keys(kind)
        unknown = self.unknown(raw, keys, path)
        values: dict[str, Any] = {}
        complete = True
        for name, kind_of in keys.items():
            where = _join(path, name)
            if raw.get(name) is None:
                if name in _required(kind):
                    self.fail(where, "required")
                    complete = False
                continue
            values[name] = self.value(raw[name], kind_of, where)
            complete = complete and values[name] is not _FAILED
        if not complete:
            return _FAILED
        try:
            made = kind(**values)
        except Invalid as exc:
            return self.fail(_join_path(path, exc.where), exc.message)
        if unknown:
            return _FAILED
        if isinstance(made, TenantConfig):
            self.tenants.append((path, made))
        return made


def _required(kind: type[msgspec.Struct]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(kind) if f.required}


# ----------------------------------------------------------------------------- YAML


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key written twice in one mapping; `path` is the key's path (``tenants[0].name``)."""

    def __init__(self, path: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem="duplicate key", problem_mark=mark)
        self.path = path

    @property
    def where(self) -> str:
        mark = self.problem_mark
        return f"line {mark.line + 1} column {mark.column + 1}" if mark else ""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping."""

    def refuse_duplicates(self, root: yaml.Node, *, as_written: bool = False) -> None:
        """Raise `DuplicateKeyError` for the first key written twice in a mapping, walking
        the document in the order it is written. Keys are compared as the loader reads them
        (``1`` and ``01`` are one key), or `as_written` (for a reader of scalars as written,
        such as the web config's: ``1`` and ``01`` are two)."""
        seen: set[int] = set()  # aliases share nodes: each is walked once
        pending: list[tuple[yaml.Node, str]] = [(root, "")]
        while pending:
            node, path = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                keys: set[object] = set()
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *defaults` may be overridden, as YAML says
                    scalar = isinstance(key_node, yaml.ScalarNode)
                    key = key_node.value if as_written and scalar else self._key(key_node)
                    shown = f"{path}.{key}" if path else str(key)
                    where = shown if as_written else _join(path, key)
                    if key in keys:
                        raise DuplicateKeyError(where, key_node.start_mark)
                    keys.add(key)
                    children.append((value_node, where))
            pending.extend(reversed(children))  # walked in the order they are written

    def _key(self, node: yaml.Node) -> object:
        """The key as the loader reads it (``1`` and ``01`` are one key), or as written
        when it cannot be read here (the loader then says why, or the caller)."""
        if isinstance(node, yaml.ScalarNode):
            try:
                key = self.construct_object(node, deep=True)
                hash(key)
            except (yaml.YAMLError, ValueError, OverflowError, TypeError):
                return (node.tag, node.value)
            return key
        return (type(node).__name__, id(node))


def compose_yaml(text: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document), each scalar as written.
    Raises `DuplicateKeyError` for a key repeated as written, with its path as written
    (``basic_auth_users.a:b``), else PyYAML's errors."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            loader.refuse_duplicates(node, as_written=True)
        return node
    finally:
        loader.dispose()


def read_yaml(text: str) -> object:
    """The data of `text`, as `yaml.safe_load` reads it, refusing repeated keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.refuse_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


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


def _join(path: str, key: object) -> str:
    """``path.key``; keys that are not plain words are quoted (one line, at most 40 chars)."""
    plain = isinstance(key, str) and _PLAIN_KEY.fullmatch(key)
    shown = str(key) if plain else json.dumps(str(key)[:40])
    return f"{path}.{shown}" if path else shown


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
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
