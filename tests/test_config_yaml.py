"""config/load's YAML reader (shared with the web config), config/model's Structs on their
own, and config/check's every-problem listing of a file."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from pki_exporter.config.check import check_config_file, problems
from pki_exporter.config.load import (
    ConfigError,
    DuplicateKeyError,
    compose_yaml,
    parse_config,
    read_yaml,
)
from pki_exporter.config.model import (
    CARef,
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretInline,
    Config,
    CRLConfig,
    GraphBudgetConfig,
    Invalid,
    RefreshConfig,
    TenantConfig,
)
from pki_exporter.web.toolkit import WebConfigError, load_web_config

TENANT_ID = "00000000-0000-0000-0000-000000000000"
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
CA_1 = "2b3a5c1e-0d4f-4a6b-9c8d-7e6f5a4b3c2d"

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
HINT = "put in your own (Entra admin center: the tenant's and the app registration's Overview)"
PLACEHOLDERS = f"tenant_id and client_id still hold the example's placeholder GUIDs; {HINT}"
TENANT = f"""\
tenants:
  - name: contoso
    tenant_id: {TENANT_ID}
    client_id: {CLIENT_ID}
    credential:
      client_secret_env: PKI_EXPORTER_CLIENT_SECRET
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


# ----------------------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "refresh:\n  interval: 5m\nrefresh:\n  interval: 10m\n" + TENANT,
            "refresh: duplicate key (line 3 column 1)",
        ),
        (
            TENANT + "    name: fabrikam\n",
            "tenants[0].name: duplicate key (line 7 column 5)",
        ),
        (
            TENANT + "    certification_authorities:\n"
            f"      - id: {CA_1}\n        name: a\n        name: b\n",
            "tenants[0].certification_authorities[0].name: duplicate key (line 10 column 9)",
        ),
        (
            # the same key, spelt once plain and once quoted
            'refresh:\n  concurrency: 2\n  "concurrency": 3\n' + TENANT,
            "refresh.concurrency: duplicate key (line 3 column 3)",
        ),
        (
            TENANT + "    credential:\n      client_secret_env: OTHER\n",
            "tenants[0].credential: duplicate key (line 7 column 5)",
        ),
    ],
)
def test_a_key_written_twice_is_refused_at_its_path(text: str, message: str) -> None:
    assert error_of(text) == message


def test_a_duplicate_key_is_the_one_problem_config_check_lists(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(TENANT + "    tenant_id: contoso.onmicrosoft.com\n    foo: 1\n")
    config, problems = check_config_file(str(path))
    assert (config, problems) == (None, ["tenants[0].tenant_id: duplicate key (line 7 column 5)"])


def test_merge_keys_may_be_overridden_and_aliases_are_read_once() -> None:
    text = "defaults: &defaults {interval: 5m, timeout: 30s}\nother: &loop [*defaults]\n"
    assert read_yaml(text) == {
        "defaults": {"interval": "5m", "timeout": "30s"},
        "other": [{"interval": "5m", "timeout": "30s"}],
    }
    assert read_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n") == {"a": {"x": 1}, "b": {"x": 2}}


def test_a_shared_node_with_a_duplicate_is_reported_once_at_its_first_path() -> None:
    with pytest.raises(DuplicateKeyError) as caught:
        read_yaml("a: &x {k: 1, k: 2}\nb: *x\n")
    assert (caught.value.path, caught.value.where) == ("a.k", "line 1 column 14")


def test_compose_keeps_scalars_as_written_and_refuses_duplicates() -> None:
    node = compose_yaml("a: 0\nb: [x, 01]\n")
    assert isinstance(node, yaml.MappingNode)
    key, value = node.value[0]
    assert (key.value, value.value) == ("a", "0")
    assert compose_yaml("") is None
    with pytest.raises(DuplicateKeyError) as caught:
        compose_yaml("a:\n  - {b: 1, b: 2}\n")
    assert caught.value.path == "a[0].b"


def test_without_duplicates_the_reader_reads_what_safe_load_reads() -> None:
    text = "a: [1, 2.5, true, null, 2024-01-02, '0x1', 0x1]\nb: {c: d}\n"
    assert read_yaml(text) == yaml.safe_load(text)
    assert read_yaml("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_server_config:\n  http2: true\n  http2: false\n", "http_server_config.http2"),
        ("basic_auth_users:\n  'a:b': x\n  a:b: y\n", "basic_auth_users.a:b"),  # as written
        ("? [a]\n: 1\n? [a]\n: 2\n", None),  # not a duplicate here: keys must be strings
    ],
)
def test_the_web_config_refuses_a_repeated_key_through_the_shared_reader(
    tmp_path: Path, text: str, message: str | None
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(str(path))
    expected = "keys must be strings, got a list" if message is None else f"{message}: repeated key"
    assert str(caught.value) == f"{path}: {expected}"


# ----------------------------------------------------------------------------- the model


def test_structs_are_frozen_hashable_and_keep_secrets_out_of_repr() -> None:
    loaded = parse_config(TENANT)
    with pytest.raises(AttributeError):
        loaded.refresh.interval = 1.0  # type: ignore[misc]
    assert hash(loaded) == hash(parse_config(TENANT))
    assert repr(ClientSecretInline("Zx8Q~s3cr3t")) == "ClientSecretInline(value=...)"
    assert loaded.tenants[0].credential == ClientSecretEnv("PKI_EXPORTER_CLIENT_SECRET")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ({"concurrency": 65}, RefreshConfig),
        ({"timeout": 0.0}, RefreshConfig),
        ({"interval": 1.0, "x": 1}, RefreshConfig),
        ({"writes_per_20s": 0}, GraphBudgetConfig),
        ({"writes_per_20s": 901}, GraphBudgetConfig),  # __post_init__, through msgspec too
        ({"id": CA_1.upper()}, CARef),
        ({"id": CA_1 + "\n"}, CARef),  # a trailing newline does not slip past the pattern
        ({"max_size": 0}, CRLConfig),
    ],
)
def test_the_structs_refuse_what_the_file_refuses_through_msgspec_too(
    value: dict[str, object], kind: type[msgspec.Struct]
) -> None:
    """The constraints are msgspec's own `Meta` (the loader reads them, never msgspec's
    English): `msgspec.convert` of the same values fails too."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(value, kind)
    assert msgspec.convert({"id": CA_1} if kind is CARef else {}, kind) is not None


def test_rules_across_fields_hold_for_structs_built_in_code() -> None:
    secret = ClientSecretEnv("PKI_EXPORTER_CLIENT_SECRET")
    with pytest.raises(Invalid) as caught:
        TenantConfig(name="a", tenant_id=TENANT_ID, credential=secret)
    assert (caught.value.where, caught.value.message) == ("client_id", "required")
    with pytest.raises(Invalid, match=r"^writes_per_20s: must not exceed requests_per_20s"):
        GraphBudgetConfig(requests_per_20s=10, writes_per_20s=11)
    with pytest.raises(Invalid, match=r"^expected either private_key_file and certificate_file"):
        CertificateCredential()


def test_a_tenant_built_in_code_reads_as_one_from_the_file() -> None:
    tenant = TenantConfig(
        name="contoso",
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        credential=ClientSecretEnv("PKI_EXPORTER_CLIENT_SECRET"),
    )
    assert parse_config(TENANT).tenants == (tenant,)
    assert (tenant.cloud, tenant.authority_host, tenant.graph_url) == (
        "global",
        "https://login.microsoftonline.com",
        "https://graph.microsoft.com",
    )
    assert tenant.scope == "https://graph.microsoft.com/.default"
    china = TenantConfig(
        name="c",
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        cloud="china",
        credential=tenant.credential,
    )
    assert china.graph_url == "https://microsoftgraph.chinacloudapi.cn"
    assert msgspec.structs.replace(parse_config(TENANT), tenants=()).tenants == ()
    assert Config.__struct_config__.forbid_unknown_fields


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "refresh:\n  interval: 5m\n  intervall: 1m\n" + TENANT,
            ("refresh.intervall: unknown key (did you mean interval?)"),
        ),
        ("source: x\n" + TENANT, "source: unknown key"),
        ("warnings: [x]\n" + TENANT, "warnings: unknown key"),
        ("1: x\n" + TENANT, '"1": unknown key'),
        (TENANT + "    leaf_source: ' '\n", "tenants[0].leaf_source: must not be empty"),
        (
            TENANT + "    leaf_source: get\n",
            "tenants[0].leaf_source: expected one of action, navigation",
        ),
        (TENANT + "    cloud: ' '\n", "tenants[0].cloud: must not be empty"),
        (
            TENANT.replace(TENANT_ID, "contoso.onmicrosoft.com\\n"),
            ("tenants[0].tenant_id: not a GUID or a domain name like contoso.onmicrosoft.com"),
        ),
        (
            TENANT.replace(f"tenant_id: {TENANT_ID}", f"tenant_id: '{'a' * 250}.com'"),
            ("tenants[0].tenant_id: not a GUID or a domain name like contoso.onmicrosoft.com"),
        ),
        (
            "expiry_windows_days: !!set {1, 2}\n" + TENANT,
            "expiry_windows_days: expected list, got set",
        ),
        (
            TENANT + "    certification_authorities: !!set {a}\n",
            (
                'tenants[0].certification_authorities: expected "all" or a list of CAs with id '
                "and optional name"
            ),
        ),
    ],
)
def test_rules_the_structs_share_with_code_keep_their_messages(text: str, message: str) -> None:
    assert error_of(text) == message


# ----------------------------------------------------------------------------- every problem

MANY = """\
refresh: {interval: 5x, timeot: 10s}
crl: {max_size: 2GiB, allowed_hosts: ["*"], publication_grace: 1h}
tenants:
  - name: contoso
    tenant_id: 00000000-0000-0000-0000-000000000000
    client_id: 11111111-1111-1111-1111-111111111111
    credential: {client_secret_env: PKI_TEST_UNSET}
  - name: fabrikam
    tenant_id: fabrikam.onmicrosoft.com
    credential: {certificate: {pfx_file: ""}}
    proxy_url: http://u:p@proxy:3128
    no_proxy: "a.example, http://b.example"
    graph_budget: {requests_per_20s: 10, writes_per_20s: 20}
  - name: northwind
    tenant_id: northwind.onmicrosoft.com
    client_id: 2B3A5C1E-0D4F-4A6B-9C8D-7E6F5A4B3C2D
    credential: {managed_identity: {client_id: 22222222-2222-2222-2222-222222222222}}
  - name: woodgrove
    tenant_id: woodgrove.onmicrosoft.com
    credential: {managed_identity: {client_id: 22222222-2222-2222-2222-222222222222}}
    proxy_credentials_file: missing-proxy.txt
  - name: woodgrove
    tenant_id: woodgrove.onmicrosoft.com
    client_id: 3C4B6D2F-1E5A-4B7C-8D9E-8F7A6B5C4D3E
    credential: {client_secret_env: PKI_TEST_UNSET}
"""


def test_config_check_lists_every_problem_of_a_file_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's own problems in the order of its keys (rules across fields included,
    beside the failed fields they do not depend on), then, for each tenant valid on its
    own, its placeholders and what lies outside the file."""
    monkeypatch.delenv("PKI_TEST_UNSET", raising=False)
    path = tmp_path / "config.yml"
    path.write_text(MANY)
    assert check_config_file(str(path)) == (
        None,
        [
            "refresh.timeot: unknown key (did you mean timeout?)",
            "refresh.interval: expected a duration like 30s, 5m, 1h",
            "crl.max_size: must be between 1B and 1GiB",
            "crl.allowed_hosts[0]: expected a host name, an IP, or *. and a domain",
            "tenants[1].credential.certificate.pfx_file: must not be empty",
            "tenants[1].graph_budget.writes_per_20s: must not exceed requests_per_20s (10): "
            "writes are requests too",
            "tenants[1].proxy_url: credentials written inline; use proxy_credentials_env or "
            "proxy_credentials_file",
            "tenants[1].no_proxy[1]: 'http://b.example' is a URL; write the host alone (b.example)",
            "tenants[2].client_id: not used with managed_identity; a user-assigned identity's "
            "client_id goes under credential.managed_identity",
            'tenants[4].name: duplicate tenant name "woodgrove"',
            f"tenants[0]: {PLACEHOLDERS}",
            "tenants[0].credential.client_secret_env: environment variable PKI_TEST_UNSET is "
            "not set",
            "tenants[3]: credential.managed_identity.client_id still holds the example's "
            f"placeholder GUID; {HINT}",
            f'tenants[3].proxy_credentials_file: cannot read "{tmp_path / "missing-proxy.txt"}": '
            "No such file or directory",
            "tenants[4].credential.client_secret_env: environment variable PKI_TEST_UNSET is "
            "not set",
        ],
    )
    assert problems(str(path)) == check_config_file(str(path))[1]


def test_the_untouched_example_fails_on_its_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid YAML and a valid config, but the exporter could never get a token with it:
    --config.check says so (as the start does: `check_config`; `parse_config` accepts it)."""
    monkeypatch.setenv("PKI_EXPORTER_CLIENT_SECRET", "not-a-real-secret")
    config, found = check_config_file(str(EXAMPLE))
    assert config is not None and config.tenants[0].tenant_id == TENANT_ID
    assert found == [f"tenants[0]: {PLACEHOLDERS}"]
    mine = tmp_path / "config.yaml"
    text = EXAMPLE.read_text().replace(TENANT_ID, "contoso.onmicrosoft.com")
    mine.write_text(text)
    assert problems(str(mine)) == [
        f"tenants[0]: client_id still holds the example's placeholder GUID; {HINT}"
    ]
    mine.write_text(text.replace(CLIENT_ID, CA_1))
    assert problems(str(mine)) == []
