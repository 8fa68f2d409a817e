"""Property tests: whatever the YAML, the loader returns a Config or raises a one-line
ConfigError, and nothing else (no TypeError, KeyError, RecursionError, ... escapes)."""

from __future__ import annotations

import copy
import math
import re
import typing
from datetime import UTC
from pathlib import Path
from typing import Any

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from pki_exporter.config import model
from pki_exporter.config.load import ConfigError, file_keys, parse_config, parse_duration
from pki_exporter.config.model import Config, TenantConfig
from tests.fuzzing import fuzz_settings
from tests.test_config import every_key

EXAMPLE_TEXT = (Path(__file__).resolve().parent.parent / "config.example.yaml").read_text()
EXAMPLE = yaml.load(EXAMPLE_TEXT, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
SETTINGS = fuzz_settings(300)

# Keys the loader knows, so that generated documents reach deep into the validation.
KNOWN_KEYS = every_key()
TENANT_KEYS = sorted(file_keys(TenantConfig))
CREDENTIAL_KINDS = [str(kind.__struct_config__.tag) for kind in typing.get_args(model.Credential)]
INTERESTING_STRINGS = [
    "all",
    "global",
    "china",
    "0",
    "5m",
    "1s",
    "500ms",
    "https://graph.example",
    "http://graph.example",
    "https://[::1]:8443/",
    "00000000-0000-0000-0000-000000000000",
    "contoso.onmicrosoft.com",
    "PKI_EXPORTER_CLIENT_SECRET",
    "",
    " ",
    "a\nb",
    "\u2028",
    "64MiB",
    "512KiB",
    "1h",
    "*.pki.azure.net",
    ".corp.example",
    "10.0.0.0/8",
    "::1",
    "http://proxy.corp:3128",
    "http://user:pw@proxy:3128",
    "PKI_EXPORTER_PROXY",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(INTERESTING_STRINGS),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
)
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.text(max_size=10),
    st.integers(min_value=-5, max_value=5),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=25,
)


def assert_config_or_one_line_error(text: str) -> Config | None:
    try:
        loaded = parse_config(text)
    except ConfigError as error:
        message = str(error)
        assert message
        assert len(message.splitlines()) == 1, message
        assert message == (f"{error.path}: {error.message}" if error.path else error.message)
        return None
    check_invariants(loaded)
    return loaded


def check_invariants(loaded: Config) -> None:
    assert loaded.tenants
    assert len({t.name for t in loaded.tenants}) == len(loaded.tenants)
    windows = loaded.expiry_windows_days
    assert windows and list(windows) == sorted(set(windows))
    assert all(1 <= w <= 3650 for w in windows)
    assert loaded.refresh.interval >= 0 and loaded.refresh.timeout > 0
    assert 1 <= loaded.refresh.concurrency <= 64
    crl = loaded.crl
    assert 0 < crl.interval <= 7 * 86400 and 0 < crl.timeout <= 3600
    assert 0 <= crl.publication_grace <= 7 * 86400 and 1 <= crl.max_size <= 1 << 30
    assert all(host == host.strip().lower() and host for host in crl.allowed_hosts)
    for tenant in loaded.tenants:
        assert all(entry == entry.strip().lower() and entry for entry in tenant.no_proxy)
        if tenant.proxy_url is not None:
            assert tenant.proxy_url.startswith(("http://", "https://"))
            assert "@" not in tenant.proxy_url and "/" not in tenant.proxy_url.split("//", 1)[1]
        for url in (tenant.graph_url, tenant.authority_host):
            assert url.startswith("https://") and not url.endswith("/")
            assert "@" not in url and "?" not in url and "#" not in url
        assert "/" not in tenant.tenant_id and tenant.tenant_id == tenant.tenant_id.lower()
    for warning in loaded.warnings:
        assert len(warning.splitlines()) == 1


@SETTINGS
@given(values)
def test_any_yaml_document_gives_a_config_or_a_config_error(value: Any) -> None:
    assert_config_or_one_line_error(yaml.safe_dump(value))


credential_bodies = st.one_of(
    values,
    st.dictionaries(
        st.sampled_from((*file_keys(model.CertificateCredential), "token_file", "client_id")),
        st.one_of(st.sampled_from(INTERESTING_STRINGS), values),
        max_size=4,
    ),
)
tenant_changes = st.dictionaries(
    st.sampled_from(TENANT_KEYS),
    st.one_of(
        st.sampled_from(INTERESTING_STRINGS),
        st.dictionaries(st.sampled_from(CREDENTIAL_KINDS), credential_bodies),
        values,
    ),
    max_size=3,
)


@SETTINGS
@given(
    tenant_changes,
    st.dictionaries(st.sampled_from(sorted(file_keys(model.RefreshConfig))), scalars),
    st.dictionaries(
        st.sampled_from(sorted(file_keys(model.CRLConfig))),
        st.one_of(scalars, st.lists(st.sampled_from(INTERESTING_STRINGS), max_size=3)),
    ),
)
def test_random_tenant_refresh_and_crl_values_give_a_config_or_a_config_error(
    changes: dict[str, Any], refresh: dict[str, Any], crl: dict[str, Any]
) -> None:
    """Known keys with random values: this reaches the checks of each single key."""
    document = {"refresh": refresh, "crl": crl, "tenants": [EXAMPLE["tenants"][0] | changes]}
    outcome = assert_config_or_one_line_error(yaml.safe_dump(document))
    event("valid" if outcome else "error")


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    assert_config_or_one_line_error(text)


@SETTINGS
@given(st.data())
def test_any_edit_of_the_example_text_gives_a_config_or_a_config_error(data: st.DataObject) -> None:
    """Character-level damage to the example: YAML errors of every kind."""
    text = EXAMPLE_TEXT
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 5))
        text = text[:at] + data.draw(st.text(max_size=5)) + text[at + cut :]
    assert_config_or_one_line_error(text)


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path below `node` (mapping keys and list indexes)."""
    found: list[tuple[Any, ...]] = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        found.append((*prefix, key))
        found += paths_of(child, (*prefix, key))
    return found


def mutate(document: Any, data: st.DataObject) -> Any:
    paths = paths_of(document)
    path = data.draw(st.sampled_from(paths))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    action = data.draw(st.sampled_from(["drop", "replace", "add", "wrap"]))
    if action == "drop":
        del parent[path[-1]]
    elif action == "replace":
        parent[path[-1]] = data.draw(values)
    elif action == "wrap":
        parent[path[-1]] = [parent[path[-1]]]
    elif isinstance(parent, dict):
        parent[data.draw(keys)] = data.draw(values)
    else:
        parent.append(data.draw(values))
    return document


@SETTINGS
@given(st.data())
def test_mutated_example_gives_a_config_or_a_config_error(data: st.DataObject) -> None:
    document = copy.deepcopy(EXAMPLE)
    document["tenants"][0]["certification_authorities"] = [
        {"id": "2b3a5c1e-0d4f-4a6b-9c8d-7e6f5a4b3c2d", "name": "Issuing CA (EU)"}
    ]
    document["tenants"].append(copy.deepcopy(document["tenants"][0]) | {"name": "fabrikam"})
    for _ in range(data.draw(st.integers(1, 3))):
        if not paths_of(document):
            break
        document = mutate(document, data)
    outcome = assert_config_or_one_line_error(yaml.safe_dump(document))
    event("valid" if outcome else "error")


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=30),
        st.from_regex(r"([0-9]{1,4}(y|w|d|h|m|s|ms)){1,4}", fullmatch=True),
        st.integers(),
        st.floats(),
        st.booleans(),
    )
)
def test_parse_duration_gives_seconds_or_a_config_error(text: Any) -> None:
    try:
        seconds = parse_duration(text, "refresh.interval")
    except ConfigError as error:
        assert error.path == "refresh.interval"
        assert len(str(error).splitlines()) == 1
        return
    assert isinstance(seconds, float) and seconds >= 0
    if isinstance(text, str):  # an independent reading of the same syntax
        units = {"y": 31_536_000, "w": 604_800, "d": 86_400, "h": 3600, "m": 60, "s": 1}
        parts = re.findall(r"([0-9]+)(ms|[ywdhms])", text)
        expected = sum(int(n) * (0.001 if unit == "ms" else units[unit]) for n, unit in parts)
        assert math.isclose(seconds, expected)
    else:
        assert seconds == 0


def test_the_unmutated_inputs_are_valid() -> None:
    """The fuzzers start from valid documents; otherwise they would only test one error."""
    assert assert_config_or_one_line_error(EXAMPLE_TEXT) is not None
