"""The config loader: the example file, defaults, clouds, durations, every error message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pki_exporter.config.check import check_config
from pki_exporter.config.load import (
    ConfigError,
    file_keys,
    load_config,
    parse_config,
    parse_duration,
)
from pki_exporter.config.model import (
    CLOUDS,
    CARef,
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    ClientSecretInline,
    Config,
    CRLConfig,
    GraphBudgetConfig,
    ManagedIdentityCredential,
    RefreshConfig,
    TenantConfig,
    WorkloadIdentityCredential,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
CA_1 = "2b3a5c1e-0d4f-4a6b-9c8d-7e6f5a4b3c2d"
SECRET = "Zx8Q~s3cr3t.V4lue-DoNotLeak"  # what a client secret looks like
DROP = object()
INLINE_WARNING = (
    "tenants[0].credential.client_secret: secret written inline in the config file; "
    "use client_secret_env or client_secret_file"
)


def tenant(**changes: Any) -> dict[str, Any]:
    """A valid tenant mapping; a change to DROP removes the key."""
    base: dict[str, Any] = {
        "name": "contoso",
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "credential": {"client_secret_env": "PKI_EXPORTER_CLIENT_SECRET"},
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not DROP}


def document(*tenants: dict[str, Any], **top: Any) -> str:
    body: dict[str, Any] = {"tenants": list(tenants) or [tenant()], **top}
    body = {k: v for k, v in body.items() if v is not DROP}
    return yaml.dump(body, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def expected_tenant(**changes: Any) -> TenantConfig:
    values: dict[str, Any] = {
        "name": "contoso",
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "cloud": "global",
        "authority_host": "https://login.microsoftonline.com",
        "graph_url": "https://graph.microsoft.com",
        "ca_bundle": None,
        "credential": ClientSecretEnv("PKI_EXPORTER_CLIENT_SECRET"),
        "certification_authorities": "all",
    }
    values.update(changes)
    return TenantConfig(**values)


def every_key() -> list[str]:
    """Every key a config file may hold, read from the model's Structs."""
    structs = (Config, RefreshConfig, CRLConfig, TenantConfig, GraphBudgetConfig, CARef)
    credentials = (CertificateCredential, WorkloadIdentityCredential, ManagedIdentityCredential)
    keys = [key for struct in structs + credentials for key in file_keys(struct)]
    tags = (ClientSecretEnv, ClientSecretFile, ClientSecretInline, *credentials)
    return sorted(set(keys) | {str(kind.__struct_config__.tag) for kind in tags})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


# ----------------------------------------------------------------------------- valid files


def test_example_file_loads_to_the_exact_config() -> None:
    assert load_config(str(EXAMPLE)) == Config(
        refresh=RefreshConfig(interval=300.0, timeout=60.0, concurrency=4),
        expiry_windows_days=(7, 30, 90),
        tenants=(expected_tenant(),),
        crl=CRLConfig(),
        warnings=(),
        source=str(EXAMPLE),
    )


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = [key for key in every_key() if f"{key}:" not in text]
    assert missing == []
    assert " | ".join(CLOUDS) in text


@pytest.mark.parametrize(
    ("commented", "credential"),
    [
        ("# client_secret_file: /run/secrets/pki-exporter", ClientSecretFile),
        ('# client_secret: "..."', ClientSecretInline),
        ("# workload_identity: {}", WorkloadIdentityCredential),
        ("# managed_identity: {}", ManagedIdentityCredential),
    ],
)
def test_example_alternatives_load_when_uncommented(commented: str, credential: type) -> None:
    text = EXAMPLE.read_text()
    text = text.replace("client_secret_env: PKI_EXPORTER", "# client_secret_env: X")
    text = text.replace(commented, commented.removeprefix("# "))
    if credential is ManagedIdentityCredential:
        text = text.replace("    client_id: 1111", "    # client_id: 1111")
    loaded = parse_config(text)
    assert type(loaded.tenants[0].credential) is credential


def test_defaults_of_a_minimal_config() -> None:
    loaded = parse_config(document(), source="mini.yaml")
    assert loaded == Config(tenants=(expected_tenant(),), source="mini.yaml")
    assert (loaded.refresh, loaded.expiry_windows_days, loaded.warnings) == (
        RefreshConfig(),
        (7, 30, 90),
        (),
    )
    assert RefreshConfig() == RefreshConfig(interval=300.0, timeout=60.0, concurrency=4)


def test_null_means_left_out() -> None:
    text = document(
        tenant(cloud=None, ca_bundle=None, graph_url=None, certification_authorities=None),
        refresh=None,
        expiry_windows_days=None,
    )
    assert parse_config(text).tenants[0] == expected_tenant()
    assert parse_config(text).refresh == RefreshConfig()


@pytest.mark.parametrize(
    ("cloud", "graph", "authority"),
    [
        ("global", "https://graph.microsoft.com", "https://login.microsoftonline.com"),
        ("usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us"),
        ("usgov-dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
        ("china", "https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    ],
)
def test_each_cloud_resolves_to_the_spec_hosts(cloud: str, graph: str, authority: str) -> None:
    loaded = parse_config(document(tenant(cloud=cloud))).tenants[0]
    assert (loaded.cloud, loaded.graph_url, loaded.authority_host) == (cloud, graph, authority)
    assert loaded.scope == f"{graph}/.default"
    assert CLOUDS[cloud] == (graph, authority)


def test_overrides_are_normalised() -> None:
    text = document(
        tenant(
            cloud="china",
            authority_host="HTTPS://Login.Example:8443/",
            graph_url="https://127.0.0.1:9443",
            ca_bundle="/etc/ca.pem",
        )
    )
    loaded = parse_config(text).tenants[0]
    assert loaded.authority_host == "https://login.example:8443"
    assert loaded.graph_url == "https://127.0.0.1:9443"
    assert loaded.scope == "https://127.0.0.1:9443/.default"
    assert loaded.ca_bundle == "/etc/ca.pem"
    assert parse_config(document(tenant(graph_url="https://[::1]:1/"))).tenants[0].graph_url == (
        "https://[::1]:1"
    )


def test_full_config_with_every_kind_of_value() -> None:
    text = document(
        tenant(
            name="fabrikam",
            tenant_id="Fabrikam.OnMicrosoft.com",
            client_id=CLIENT_ID.upper().replace("1", "A"),
            credential={"certificate": {"pfx_file": "/k/app.pfx", "passphrase_env": "PFX_PASS"}},
            certification_authorities=[
                {"id": CA_1.upper(), "name": "Issuing CA (EU)"},
                {"id": "3C4B6D2F-1E5A-4B7C-8D9E-8F7A6B5C4D3E"},
            ],
        ),
        refresh={"interval": "1h30m", "timeout": "500ms", "concurrency": 64},
        expiry_windows_days=[90, 7, 3650, 7, 1],
    )
    loaded = parse_config(text)
    assert loaded.refresh == RefreshConfig(5400.0, 0.5, 64)
    assert loaded.expiry_windows_days == (1, 7, 90, 3650)
    assert loaded.tenants[0] == expected_tenant(
        name="fabrikam",
        tenant_id="fabrikam.onmicrosoft.com",
        client_id="aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        credential=CertificateCredential(pfx_file="/k/app.pfx", passphrase_env="PFX_PASS"),
        certification_authorities=(
            CARef(CA_1, "Issuing CA (EU)"),
            CARef("3c4b6d2f-1e5a-4b7c-8d9e-8f7a6b5c4d3e"),
        ),
    )


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ({"client_secret_file": "/s/secret"}, ClientSecretFile("/s/secret")),
        ({"client_secret": SECRET}, ClientSecretInline(SECRET)),
        (
            {"certificate": {"private_key_file": "/k.pem", "certificate_file": "/c.pem"}},
            CertificateCredential("/k.pem", "/c.pem"),
        ),
        (
            {"certificate": {"pfx_file": "/a.pfx", "passphrase_file": "/p"}},
            CertificateCredential(pfx_file="/a.pfx", passphrase_file="/p"),
        ),
        ({"workload_identity": None}, WorkloadIdentityCredential()),
        ({"workload_identity": {"token_file": "/t"}}, WorkloadIdentityCredential("/t")),
    ],
)
def test_credential_kinds(credential: dict[str, Any], expected: object) -> None:
    assert parse_config(document(tenant(credential=credential))).tenants[0].credential == expected


@pytest.mark.parametrize(
    ("managed", "client_id"),
    [({}, None), (None, None), ({"client_id": CA_1.upper()}, CA_1)],
)
def test_managed_identity_needs_no_client_id(managed: Any, client_id: str | None) -> None:
    text = document(tenant(client_id=DROP, credential={"managed_identity": managed}))
    loaded = parse_config(text).tenants[0]
    assert loaded.client_id is None
    assert loaded.credential == ManagedIdentityCredential(client_id)


def test_relative_paths_are_read_from_the_config_directory(tmp_path: Path) -> None:
    credential = {"certificate": {"private_key_file": "k.pem", "certificate_file": "/abs/c.pem"}}
    path = tmp_path / "pki.yaml"
    path.write_text(document(tenant(credential=credential, ca_bundle="sub/ca.pem")))
    loaded = load_config(str(path)).tenants[0]
    assert loaded.credential == CertificateCredential(str(tmp_path / "k.pem"), "/abs/c.pem")
    assert loaded.ca_bundle == str(tmp_path / "sub" / "ca.pem")
    assert parse_config(path.read_text()).tenants[0].ca_bundle == "sub/ca.pem"


def test_two_tenants_keep_their_order() -> None:
    text = document(tenant(name="b"), tenant(name="a", cloud="usgov"))
    assert [t.name for t in parse_config(text).tenants] == ["b", "a"]


def test_config_is_frozen() -> None:
    loaded = parse_config(document())
    with pytest.raises(AttributeError):
        loaded.tenants[0].name = "x"  # type: ignore[misc]


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1m30s500ms", 90.5),
        ("1d", 86400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("0s", 0.0),
        ("0", 0.0),
        (0, 0.0),
        (0.0, 0.0),
        ("292y", 292 * 365 * 86400.0),
    ],
)
def test_durations(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5",
        5,
        1.5,
        -1,
        "1.5h",
        "30m1h",
        "1h1h",
        "-5m",
        "5 m",
        " 5m",
        "5M",
        "ms",
        "5m\n",
        "\u0661s",
        True,
        False,
        "1s" * 40,
    ],
)
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "refresh.interval")
    assert str(caught.value) == "refresh.interval: expected a duration like 30s, 5m, 1h"


def test_duration_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"^t: duration out of range$"):
        parse_duration("293y", "t")


@pytest.mark.parametrize(
    ("refresh", "expected"),
    [
        ({"interval": 0}, RefreshConfig(interval=0.0)),
        ({"interval": "0"}, RefreshConfig(interval=0.0)),
        ({"interval": "7d", "timeout": "1h"}, RefreshConfig(604800.0, 3600.0)),
        ({"concurrency": 1}, RefreshConfig(concurrency=1)),
    ],
)
def test_refresh_values(refresh: dict[str, Any], expected: RefreshConfig) -> None:
    assert parse_config(document(refresh=refresh)).refresh == expected


@pytest.mark.parametrize(
    ("crl", "expected"),
    [
        ({}, CRLConfig()),
        (None, CRLConfig()),
        (
            {
                "enabled": False,
                "interval": "5s",
                "timeout": "500ms",
                "max_size": "512KiB",
                "publication_grace": 0,
                "allowed_hosts": ["*.PKI.Azure.net", " crl.corp.example ", "10.0.0.5", "::1"],
            },
            CRLConfig(
                False,
                5.0,
                0.5,
                512 << 10,
                0.0,
                ("*.pki.azure.net", "crl.corp.example", "10.0.0.5", "::1"),
            ),
        ),
        ({"max_size": "1GB", "allowed_hosts": []}, CRLConfig(max_size=10**9, allowed_hosts=())),
        ({"max_size": "1 MiB", "interval": "7d"}, CRLConfig(interval=604800.0, max_size=1 << 20)),
        (
            {"max_size": 4096, "publication_grace": "7d"},
            CRLConfig(max_size=4096, publication_grace=604800.0),
        ),
        ({"max_size": "1GiB", "timeout": "1h"}, CRLConfig(timeout=3600.0, max_size=1 << 30)),
        ({"max_size": "64kB"}, CRLConfig(max_size=64000)),
    ],
)
def test_crl_values(crl: dict[str, Any] | None, expected: CRLConfig) -> None:
    """Durations in seconds (floats), sizes in bytes (ints), host patterns lower-cased."""
    loaded = parse_config(document(crl=crl)).crl
    assert loaded == expected
    assert isinstance(loaded.max_size, int) and isinstance(loaded.interval, float)


def test_proxy_keys_are_normalised() -> None:
    text = document(
        tenant(
            proxy_url="HTTP://Proxy.Corp:3128/",
            no_proxy=" .Corp.Example, 10.0.0.1/8,,::1, [FE80::1], Host-1.example ,192.0.2.7",
            proxy_from_environment=False,
            proxy_credentials_file="proxy.txt",
        ),
        tenant(
            name="b",
            proxy_url="https://[::1]:8443",
            no_proxy=["localhost", "2001:db8::/32"],
            proxy_credentials_env="PROXY_CREDENTIALS",
        ),
    )
    first, second = parse_config(text).tenants
    assert (first.proxy_url, first.proxy_from_environment) == ("http://proxy.corp:3128", False)
    assert first.no_proxy == (
        ".corp.example",
        "10.0.0.0/8",
        "::1",
        "fe80::1",
        "host-1.example",
        "192.0.2.7",
    )
    assert (first.proxy_credentials_file, first.proxy_credentials_env) == ("proxy.txt", None)
    assert (second.proxy_url, second.no_proxy) == (
        "https://[::1]:8443",
        ("localhost", "2001:db8::/32"),
    )
    assert (second.proxy_credentials_env, second.proxy_from_environment) == (
        "PROXY_CREDENTIALS",
        True,
    )
    plain = parse_config(document()).tenants[0]
    assert (plain.proxy_url, plain.no_proxy, plain.proxy_from_environment) == (None, (), True)


def test_proxy_credentials_file_is_read_from_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "pki.yaml"
    path.write_text(document(tenant(proxy_credentials_file="secrets/proxy")))
    assert load_config(str(path)).tenants[0].proxy_credentials_file == str(
        tmp_path / "secrets/proxy"
    )


# ----------------------------------------------------------------------------- broken files

TWO = [tenant(), tenant()]
BROKEN: list[tuple[str, str, str]] = [
    # (id, text, the exact message)
    ("empty", "", "empty config; expected a mapping with a tenants list"),
    ("only-comments", "# nothing\n", "empty config; expected a mapping with a tenants list"),
    ("top-list", "- tenants\n", "expected a mapping at the top level, got list"),
    ("top-scalar", "tenants\n", "expected a mapping at the top level, got string"),
    (
        "yaml-syntax",
        "tenants: [\n",
        "line 2 column 1: while parsing a flow node, expected the node content, "
        "but found '<stream end>'",
    ),
    (
        "yaml-indent",
        "tenants:\n  - name: a\n   tenant_id: b\n",
        "line 3 column 4: while parsing a block collection, expected <block end>, "
        "but found '<block mapping start>'",
    ),
    (
        "yaml-two-documents",
        "tenants: []\n---\ntenants: []\n",
        "line 2 column 1: expected a single document in the stream, but found another document",
    ),
    ("yaml-bad-date", "refresh: 2024-13-45\n", "invalid YAML value: month must be in 1..12"),
    ("top-unknown", document(tenant=[]), "tenant: unknown key (did you mean tenants?)"),
    ("top-int-key", "1: x\n", '"1": unknown key'),
    ("tenants-missing", "refresh: {}\n", "tenants: required"),
    ("tenants-empty", "tenants: []\n", "tenants: must not be empty"),
    ("tenants-mapping", "tenants: {name: a}\n", "tenants: expected list, got mapping"),
    ("tenant-scalar", "tenants: [contoso]\n", "tenants[0]: expected mapping, got string"),
    (
        "tenant-typo",
        document(tenant(clent_id=CLIENT_ID)),
        "tenants[0].clent_id: unknown key (did you mean client_id?)",
    ),
    (
        "tenant-odd-key",
        document(tenant(**{"client id": CLIENT_ID})),
        'tenants[0]."client id": unknown key (did you mean client_id?)',
    ),
    ("name-missing", document(tenant(name=DROP)), "tenants[0].name: required"),
    ("name-null", document(tenant(name=None)), "tenants[0].name: required"),
    ("name-empty", document(tenant(name="")), "tenants[0].name: must not be empty"),
    ("name-bool", "tenants: [{name: yes}]\n", "tenants[0].name: expected string, got boolean"),
    ("name-long", document(tenant(name="x" * 65)), "tenants[0].name: at most 64 characters"),
    (
        "name-control",
        document(tenant(name="a\tb")),
        "tenants[0].name: must not contain control or non-printable characters",
    ),
    (
        "name-duplicate",
        document(tenant(), tenant(tenant_id="contoso.onmicrosoft.com")),
        'tenants[1].name: duplicate tenant name "contoso"',
    ),
    ("tenant-id-missing", document(tenant(tenant_id=DROP)), "tenants[0].tenant_id: required"),
    *(
        (
            f"tenant-id-{i}",
            document(tenant(tenant_id=bad)),
            "tenants[0].tenant_id: not a GUID or a domain name like contoso.onmicrosoft.com",
        )
        for i, bad in enumerate(
            [
                "common",
                "contoso.onmicrosoft.com/../x",
                "contoso.onmicrosoft.com?x=1",
                "evil.com#",
                "-contoso.com",
                "contoso.123",
                "00000000-0000-0000-0000-00000000000g",
                "c\u00f6ntoso.com",
            ]
        )
    ),
    (
        "tenant-id-date",
        "tenants: [{name: a, tenant_id: 2024-01-01}]\n",
        "tenants[0].tenant_id: expected string, got timestamp",
    ),
    ("client-id-missing", document(tenant(client_id=DROP)), "tenants[0].client_id: required"),
    ("client-id-bad", document(tenant(client_id="my-app")), "tenants[0].client_id: not a GUID"),
    (
        "client-id-braces",
        document(tenant(client_id="{" + CLIENT_ID + "}")),
        "tenants[0].client_id: not a GUID",
    ),
    (
        "client-id-int",
        document(tenant(client_id=12345)),
        "tenants[0].client_id: expected string, got integer",
    ),
    (
        "cloud-unknown",
        document(tenant(cloud="azure")),
        "tenants[0].cloud: expected one of global, usgov, usgov-dod, china",
    ),
    (
        "cloud-list",
        document(tenant(cloud=["global"])),
        "tenants[0].cloud: expected string, got list",
    ),
    (
        "authority-http",
        document(tenant(authority_host="http://login.example")),
        "tenants[0].authority_host: expected an https URL like https://graph.example",
    ),
    (
        "authority-bare-host",
        document(tenant(authority_host="login.example")),
        "tenants[0].authority_host: expected an https URL like https://graph.example",
    ),
    *(
        (
            f"graph-url-{i}",
            document(tenant(graph_url=bad)),
            "tenants[0].graph_url: expected only scheme, host and port, like https://graph.example",
        )
        for i, bad in enumerate(
            [
                "https://graph.example/v1.0",
                "https://graph.example?x=1",
                "https://graph.example/#x",
                "https://user:pw@graph.example",
                "https://",
                "https://graph.example:99999",
                "https://graph_example",
            ]
        )
    ),
    (
        "ca-bundle-int",
        document(tenant(ca_bundle=5)),
        "tenants[0].ca_bundle: expected string, got integer",
    ),
    ("credential-missing", document(tenant(credential=DROP)), "tenants[0].credential: required"),
    (
        "credential-string",
        document(tenant(credential="secret")),
        "tenants[0].credential: expected mapping, got string",
    ),
    *(
        (
            f"credential-count-{i}",
            document(tenant(credential=credential)),
            "tenants[0].credential: expected exactly one of client_secret_env, "
            "client_secret_file, client_secret, certificate, workload_identity, managed_identity",
        )
        for i, credential in enumerate([{}, {"client_secret_env": "A", "client_secret_file": "/b"}])
    ),
    (
        "credential-unknown",
        document(tenant(credential={"password": "x"})),
        "tenants[0].credential.password: unknown key",
    ),
    (
        "secret-env-not-a-name",
        document(tenant(credential={"client_secret_env": "MY SECRET"})),
        "tenants[0].credential.client_secret_env: not an environment variable name",
    ),
    (
        "secret-env-null",
        document(tenant(credential={"client_secret_env": None})),
        "tenants[0].credential.client_secret_env: expected string, got null",
    ),
    (
        "secret-file-empty",
        document(tenant(credential={"client_secret_file": ""})),
        "tenants[0].credential.client_secret_file: must not be empty",
    ),
    (
        "inline-secret-int",
        document(tenant(credential={"client_secret": 12345})),
        "tenants[0].credential.client_secret: expected string, got integer",
    ),
    (
        "certificate-half-pair",
        document(tenant(credential={"certificate": {"private_key_file": "/k.pem"}})),
        "tenants[0].credential.certificate.certificate_file: required with private_key_file",
    ),
    (
        "certificate-other-half",
        document(tenant(credential={"certificate": {"certificate_file": "/c.pem"}})),
        "tenants[0].credential.certificate.private_key_file: required with certificate_file",
    ),
    (
        "certificate-none",
        document(tenant(credential={"certificate": {"passphrase_env": "P"}})),
        "tenants[0].credential.certificate: expected either private_key_file and "
        "certificate_file, or pfx_file",
    ),
    (
        "certificate-both",
        document(tenant(credential={"certificate": {"pfx_file": "/a", "private_key_file": "/k"}})),
        "tenants[0].credential.certificate: expected either private_key_file and "
        "certificate_file, or pfx_file, not both",
    ),
    (
        "certificate-two-passphrases",
        document(
            tenant(
                credential={
                    "certificate": {
                        "pfx_file": "/a",
                        "passphrase_env": "P",
                        "passphrase_file": "/p",
                    }
                }
            )
        ),
        "tenants[0].credential.certificate: expected at most one of passphrase_env, "
        "passphrase_file",
    ),
    (
        "certificate-typo",
        document(tenant(credential={"certificate": {"pfx": "/a"}})),
        "tenants[0].credential.certificate.pfx: unknown key",
    ),
    (
        "certificate-null",
        document(tenant(credential={"certificate": None})),
        "tenants[0].credential.certificate: expected either private_key_file and "
        "certificate_file, or pfx_file",
    ),
    (
        "workload-token-int",
        document(tenant(credential={"workload_identity": {"token_file": 5}})),
        "tenants[0].credential.workload_identity.token_file: expected string, got integer",
    ),
    (
        "managed-with-tenant-client-id",
        document(tenant(credential={"managed_identity": {}})),
        "tenants[0].client_id: not used with managed_identity; a user-assigned identity's "
        "client_id goes under credential.managed_identity",
    ),
    (
        "managed-bad-client-id",
        document(tenant(client_id=DROP, credential={"managed_identity": {"client_id": "x"}})),
        "tenants[0].credential.managed_identity.client_id: not a GUID",
    ),
    (
        "cas-word",
        document(tenant(certification_authorities="any")),
        'tenants[0].certification_authorities: expected "all" or a list of CAs with id and '
        "optional name",
    ),
    (
        "cas-empty",
        document(tenant(certification_authorities=[])),
        "tenants[0].certification_authorities: must not be empty",
    ),
    (
        "cas-bare-id",
        document(tenant(certification_authorities=[CA_1])),
        "tenants[0].certification_authorities[0]: expected mapping, got string",
    ),
    (
        "cas-id-missing",
        document(tenant(certification_authorities=[{"name": "x"}])),
        "tenants[0].certification_authorities[0].id: required",
    ),
    (
        "cas-id-bad",
        document(tenant(certification_authorities=[{"id": "2b3a5c1e"}])),
        "tenants[0].certification_authorities[0].id: not a GUID",
    ),
    (
        "cas-id-duplicate",
        document(tenant(certification_authorities=[{"id": CA_1}, {"id": CA_1.upper()}])),
        f"tenants[0].certification_authorities[1].id: duplicate CA id {CA_1}",
    ),
    (
        "cas-typo",
        document(tenant(certification_authorities=[{"id": CA_1, "nmae": "x"}])),
        "tenants[0].certification_authorities[0].nmae: unknown key (did you mean name?)",
    ),
    (
        "cas-name-long",
        document(tenant(certification_authorities=[{"id": CA_1, "name": "n" * 65}])),
        "tenants[0].certification_authorities[0].name: at most 64 characters",
    ),
    ("refresh-scalar", document(refresh="5m"), "refresh: expected mapping, got string"),
    (
        "refresh-typo",
        document(refresh={"intervall": "5m"}),
        "refresh.intervall: unknown key (did you mean interval?)",
    ),
    *(
        (
            f"interval-{i}",
            document(refresh={"interval": bad}),
            "refresh.interval: expected a duration like 30s, 5m, 1h",
        )
        for i, bad in enumerate([300, "300", "5 minutes", "-1m", [], True])
    ),
    ("interval-long", document(refresh={"interval": "8d"}), "refresh.interval: must be at most 7d"),
    *(
        (
            f"timeout-{i}",
            document(refresh={"timeout": zero}),
            "refresh.timeout: must be greater than 0",
        )
        for i, zero in enumerate([0, "0", "0s"])
    ),
    ("timeout-long", document(refresh={"timeout": "61m"}), "refresh.timeout: must be at most 1h"),
    (
        "concurrency-bool",
        document(refresh={"concurrency": True}),
        "refresh.concurrency: expected integer, got boolean",
    ),
    (
        "concurrency-float",
        document(refresh={"concurrency": 4.0}),
        "refresh.concurrency: expected integer, got number",
    ),
    *(
        (
            f"concurrency-{n}",
            document(refresh={"concurrency": n}),
            "refresh.concurrency: must be between 1 and 64",
        )
        for n in (0, 65, -1)
    ),
    (
        "windows-scalar",
        document(expiry_windows_days=7),
        "expiry_windows_days: expected list, got integer",
    ),
    ("windows-empty", document(expiry_windows_days=[]), "expiry_windows_days: must not be empty"),
    (
        "windows-zero",
        document(expiry_windows_days=[7, 0]),
        "expiry_windows_days[1]: must be between 1 and 3650",
    ),
    (
        "windows-large",
        document(expiry_windows_days=[3651]),
        "expiry_windows_days[0]: must be between 1 and 3650",
    ),
    (
        "windows-float",
        document(expiry_windows_days=[7.5]),
        "expiry_windows_days[0]: expected integer, got number",
    ),
    (
        "windows-string",
        document(expiry_windows_days=["7d"]),
        "expiry_windows_days[0]: expected integer, got string",
    ),
    (
        "budget-writes-above-requests",
        document(tenant(graph_budget={"requests_per_20s": 50, "writes_per_20s": 51})),
        "tenants[0].graph_budget.writes_per_20s: must not exceed requests_per_20s (50): "
        "writes are requests too",
    ),
    (
        "budget-zero",
        document(tenant(graph_budget={"requests_per_20s": 0})),
        "tenants[0].graph_budget.requests_per_20s: must be between 1 and 100000",
    ),
    (
        "budget-typo",
        document(tenant(graph_budget={"writes_per_20": 5})),
        "tenants[0].graph_budget.writes_per_20: unknown key (did you mean writes_per_20s?)",
    ),
    ("crl-scalar", document(crl=5), "crl: expected mapping, got integer"),
    (
        "crl-typo",
        document(crl={"max_szie": "1MiB"}),
        "crl.max_szie: unknown key (did you mean max_size?)",
    ),
    (
        "crl-enabled-string",
        document(crl={"enabled": "off"}),
        "crl.enabled: expected boolean, got string",
    ),
    *(
        (
            f"crl-{key}-{i}",
            document(crl={key: bad}),
            f"crl.{key}: expected a duration like 30s, 5m, 1h",
        )
        for key in ("interval", "timeout", "publication_grace")
        for i, bad in enumerate([3600, "1 h", [], True])
    ),
    ("crl-interval-zero", document(crl={"interval": "0s"}), "crl.interval: must be greater than 0"),
    ("crl-interval-long", document(crl={"interval": "8d"}), "crl.interval: must be at most 7d"),
    ("crl-timeout-zero", document(crl={"timeout": 0}), "crl.timeout: must be greater than 0"),
    ("crl-timeout-long", document(crl={"timeout": "2h"}), "crl.timeout: must be at most 1h"),
    (
        "crl-grace-long",
        document(crl={"publication_grace": "1w1d"}),
        "crl.publication_grace: must be at most 7d",
    ),
    *(
        (
            f"crl-size-{i}",
            document(crl={"max_size": bad}),
            "crl.max_size: expected a size like 64MiB, 512KiB or a number of bytes",
        )
        for i, bad in enumerate(["64 megabytes", "64MiBs", "1TiB", "-1", "1.5MiB", 1.5, True, []])
    ),
    *(
        (
            f"crl-size-range-{i}",
            document(crl={"max_size": bad}),
            "crl.max_size: must be between 1B and 1GiB",
        )
        for i, bad in enumerate([0, "0MiB", "2GiB", (1 << 30) + 1, -1])
    ),
    (
        "crl-hosts-string",
        document(crl={"allowed_hosts": "*.pki.azure.net"}),
        "crl.allowed_hosts: expected list, got string",
    ),
    (
        "crl-hosts-int",
        document(crl={"allowed_hosts": ["a.example", 5]}),
        "crl.allowed_hosts[1]: expected string, got integer",
    ),
    *(
        (
            f"crl-hosts-{i}",
            document(crl={"allowed_hosts": [bad]}),
            "crl.allowed_hosts[0]: expected a host name, an IP, or *. and a domain",
        )
        for i, bad in enumerate(["*", "*.", "a.*.example", "https://a.example", "a_b.example"])
    ),
    (
        "proxy-url-int",
        document(tenant(proxy_url=3128)),
        "tenants[0].proxy_url: expected string, got integer",
    ),
    *(
        (
            f"proxy-url-scheme-{i}",
            document(tenant(proxy_url=bad)),
            "tenants[0].proxy_url: expected an http or https URL like http://proxy.corp:3128",
        )
        for i, bad in enumerate(["socks5://proxy:1080", "proxy.corp:3128", "proxy.corp"])
    ),
    (
        "proxy-url-credentials",
        document(tenant(proxy_url="http://user:hunter2@proxy.corp:3128")),
        "tenants[0].proxy_url: credentials written inline; use proxy_credentials_env or "
        "proxy_credentials_file",
    ),
    *(
        (
            f"proxy-url-parts-{i}",
            document(tenant(proxy_url=bad)),
            "tenants[0].proxy_url: expected only scheme, host and port, like "
            "http://proxy.corp:3128",
        )
        for i, bad in enumerate(
            ["http://proxy.corp/pac", "http://proxy.corp?x=1", "http://proxy:99999", "http://"]
        )
    ),
    (
        "no-proxy-int",
        document(tenant(no_proxy=10)),
        "tenants[0].no_proxy: expected list, got integer",
    ),
    *(
        (f"no-proxy-{i}", document(tenant(no_proxy=bad)), f"tenants[0].no_proxy[{index}]: {why}")
        for i, (bad, index, why) in enumerate(
            [
                (["10.0.0.0/33"], 0, "'10.0.0.0/33' is not a CIDR like 10.0.0.0/8"),
                (
                    [".", "x"],
                    0,
                    "'.': expected a host, a domain (.corp.example), an IP or a CIDR",
                ),
                (
                    ["bad host"],
                    0,
                    "'bad host': expected a host, a domain (.corp.example), an IP or a CIDR",
                ),
                (["10.0.0.0/8/8"], 0, "'10.0.0.0/8/8' is not a CIDR like 10.0.0.0/8"),
                (
                    "a.example, http://x.example/",
                    1,
                    "'http://x.example/' is a URL; write the host alone (x.example)",
                ),
                (
                    ["**.example"],
                    0,
                    "'**.example': expected a host, a domain (.corp.example), an IP or a CIDR",
                ),
            ]
        )
    ),
    (
        "no-proxy-empty-item",
        document(tenant(no_proxy=["a.example", ""])),
        "tenants[0].no_proxy[1]: must not be empty",
    ),
    (
        "proxy-from-environment-string",
        document(tenant(proxy_from_environment="false")),
        "tenants[0].proxy_from_environment: expected boolean, got string",
    ),
    (
        "proxy-credentials-env-name",
        document(tenant(proxy_credentials_env="PROXY-USER")),
        "tenants[0].proxy_credentials_env: not an environment variable name",
    ),
    (
        "proxy-credentials-file-empty",
        document(tenant(proxy_credentials_file=" ")),
        "tenants[0].proxy_credentials_file: must not be empty",
    ),
    (
        "proxy-credentials-both",
        document(tenant(proxy_credentials_env="P", proxy_credentials_file="/p")),
        "tenants[0]: expected at most one of proxy_credentials_env, proxy_credentials_file",
    ),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_config_has_its_exact_message(text: str, message: str) -> None:
    assert error_of(text) == message


def test_broken_cases_are_many_and_distinct() -> None:
    assert len(BROKEN) >= 15
    assert len({b[0] for b in BROKEN}) == len(BROKEN)


def test_config_error_carries_path_and_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(tenant(client_id="nope")))
    assert (caught.value.path, caught.value.message) == ("tenants[0].client_id", "not a GUID")


def test_a_key_with_a_line_break_stays_on_one_line() -> None:
    message = error_of(document(tenant(**{"a\nb\u2028c": 1})))
    assert message == 'tenants[0]."a\\nb\\u2028c": unknown key'
    assert len(message.splitlines()) == 1


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing))
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as caught:
        load_config(str(binary))
    assert str(caught.value) == f"{binary}: cannot read: not UTF-8 text"


def test_load_config_reports_errors_inside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(document(tenant(client_id="x")))
    with pytest.raises(ConfigError, match=r"^tenants\[0\]\.client_id: not a GUID$"):
        load_config(str(path))


# ----------------------------------------------------------------------------- warnings


def inline_secret_document() -> str:
    return document(tenant(credential={"client_secret": SECRET}))


def test_inline_secret_warns() -> None:
    loaded = parse_config(inline_secret_document())
    assert loaded.warnings == (INLINE_WARNING,)
    assert loaded.tenants[0].credential == ClientSecretInline(SECRET)
    assert SECRET not in repr(loaded)


@pytest.mark.parametrize(
    ("mode", "readers"),
    [
        (0o600, None),
        (0o400, None),
        (0o640, "group"),
        (0o604, "others"),
        (0o644, "group and others"),
    ],
)
def test_inline_secret_in_a_readable_file_warns_louder(
    tmp_path: Path, mode: int, readers: str | None
) -> None:
    path = tmp_path / "pki.yaml"
    path.write_text(inline_secret_document())
    os.chmod(path, mode)
    loaded = load_config(str(path))
    expected = [INLINE_WARNING]
    if readers is not None:
        expected.append(
            f"{path}: holds an inline client secret and is readable by {readers} "
            f"(mode {mode:04o}); restrict it with chmod 600 or move the secret to "
            "client_secret_file"
        )
    assert list(loaded.warnings) == expected


def test_readable_file_without_inline_secret_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "pki.yaml"
    path.write_text(document())
    os.chmod(path, 0o644)
    assert load_config(str(path)).warnings == ()


@pytest.mark.parametrize(
    ("interval", "warning"),
    [
        ("1s", "refresh.interval: 1s is below one minute; Graph throttles heavy readers"),
        ("59s", "refresh.interval: 59s is below one minute; Graph throttles heavy readers"),
        ("1500ms", "refresh.interval: 1500ms is below one minute; Graph throttles heavy readers"),
        ("1m", None),
        ("0", None),
        (0, None),
    ],
)
def test_short_interval_warns(interval: str | int, warning: str | None) -> None:
    loaded = parse_config(document(refresh={"interval": interval}))
    assert loaded.warnings == (() if warning is None else (warning,))


# ----------------------------------------------------------------------------- check_config

KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def config_with(credential: dict[str, Any], **extra: Any) -> Config:
    """A tenant with `credential`, and IDs that are not the example's placeholders."""
    ids = {"tenant_id": "contoso.onmicrosoft.com", "client_id": CA_1}
    return parse_config(document(tenant(credential=credential, **(ids | extra))))


def test_check_refuses_the_example_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid, but no token can ever be had with them: the start is refused as the check
    is (one line per tenant, naming each key that still holds one)."""
    monkeypatch.setenv("PKI_EXPORTER_CLIENT_SECRET", SECRET)
    text = document(
        tenant(),
        tenant(name="b", tenant_id="contoso.onmicrosoft.com"),
        tenant(
            name="c",
            client_id=DROP,
            credential={"managed_identity": {"client_id": "2" * 8 + "-2222" * 3 + "-" + "2" * 12}},
        ),
        tenant(name="d", tenant_id="contoso.onmicrosoft.com", client_id=CA_1),
    )
    hint = "put in your own (Entra admin center: the tenant's and the app registration's Overview)"
    assert check_config(parse_config(text)) == [
        f"tenants[0]: tenant_id and client_id still hold the example's placeholder GUIDs; {hint}",
        f"tenants[1]: client_id still holds the example's placeholder GUID; {hint}",
        "tenants[2]: tenant_id and credential.managed_identity.client_id still hold the "
        f"example's placeholder GUIDs; {hint}",
    ]


def test_check_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = config_with({"client_secret_env": "PKI_TEST_SECRET"})
    monkeypatch.delenv("PKI_TEST_SECRET", raising=False)
    assert check_config(loaded) == [
        "tenants[0].credential.client_secret_env: environment variable PKI_TEST_SECRET is not set"
    ]
    monkeypatch.setenv("PKI_TEST_SECRET", " ")
    assert check_config(loaded) == [
        "tenants[0].credential.client_secret_env: environment variable PKI_TEST_SECRET is empty"
    ]
    monkeypatch.setenv("PKI_TEST_SECRET", SECRET)
    assert check_config(loaded) == []


def test_check_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    loaded = config_with({"client_secret_file": str(secret)})
    where = "tenants[0].credential.client_secret_file"
    assert check_config(loaded) == [f'{where}: cannot read "{secret}": No such file or directory']
    secret.write_text("\n")
    assert check_config(loaded) == [f'{where}: "{secret}" is empty']
    secret.write_text(SECRET + "\n")
    assert check_config(loaded) == []
    directory = config_with({"client_secret_file": str(tmp_path)})
    assert check_config(directory) == [f'{where}: cannot read "{tmp_path}": not a regular file']


def test_check_certificate_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert, pfx = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "app.pfx"
    pair = config_with(
        {"certificate": {"private_key_file": str(key), "certificate_file": str(cert)}}
    )
    where = "tenants[0].credential.certificate"
    assert check_config(pair) == [
        f'{where}.private_key_file: cannot read "{key}": No such file or directory',
        f'{where}.certificate_file: cannot read "{cert}": No such file or directory',
    ]
    key.write_text(SECRET)  # a secret, but not a PEM key
    cert.write_text(KEY_PEM)
    assert check_config(pair) == [
        f'{where}.private_key_file: "{key}" holds no PEM private key',
        f'{where}.certificate_file: "{cert}" holds no PEM certificate',
    ]
    key.write_text(KEY_PEM.replace("PRIVATE", "RSA PRIVATE"))
    cert.write_text(CERT_PEM)
    assert check_config(pair) == []

    monkeypatch.delenv("PKI_TEST_PASS", raising=False)
    packed = config_with({"certificate": {"pfx_file": str(pfx), "passphrase_env": "PKI_TEST_PASS"}})
    assert check_config(packed) == [
        f'{where}.pfx_file: cannot read "{pfx}": No such file or directory',
        f"{where}.passphrase_env: environment variable PKI_TEST_PASS is not set",
    ]
    pfx.write_bytes(b"\x30\x82\x01")
    monkeypatch.setenv("PKI_TEST_PASS", SECRET)
    assert check_config(packed) == []
    by_file = config_with(
        {"certificate": {"pfx_file": str(pfx), "passphrase_file": "/nonexistent/p"}}
    )
    assert check_config(by_file) == [
        f'{where}.passphrase_file: cannot read "/nonexistent/p": No such file or directory'
    ]


def test_check_workload_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = "tenants[0].credential.workload_identity"
    from_env = config_with({"workload_identity": {}})
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    assert check_config(from_env) == [
        f"{where}: no token_file and AZURE_FEDERATED_TOKEN_FILE is not set"
    ]
    token = tmp_path / "token"
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))
    assert check_config(from_env) == [
        f'{where} (AZURE_FEDERATED_TOKEN_FILE): cannot read "{token}": No such file or directory'
    ]
    token.write_text("eyJ0eXAi.token")
    assert check_config(from_env) == []
    explicit = config_with({"workload_identity": {"token_file": str(tmp_path / "other")}})
    assert check_config(explicit) == [
        f'{where}.token_file: cannot read "{tmp_path / "other"}": No such file or directory'
    ]


def test_check_ca_bundle_and_several_tenants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("PKI_EXPORTER_CLIENT_SECRET", SECRET)
    ids = {"tenant_id": "contoso.onmicrosoft.com", "client_id": CA_1}
    text = document(
        tenant(ca_bundle=str(bundle), **ids),
        tenant(
            name="b",
            credential={"managed_identity": {}},
            tenant_id=ids["tenant_id"],
            client_id=DROP,
        ),
        tenant(name="c", credential={"client_secret": SECRET}, ca_bundle=str(bundle), **ids),
    )
    loaded = parse_config(text)
    assert check_config(loaded) == [
        f'tenants[0].ca_bundle: cannot read "{bundle}": No such file or directory',
        f'tenants[2].ca_bundle: cannot read "{bundle}": No such file or directory',
    ]
    bundle.write_text(CERT_PEM)
    assert check_config(loaded) == []


def test_check_proxy_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a client secret: set, not blank, and (what a proxy needs) user:password."""
    monkeypatch.setenv("PKI_EXPORTER_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("PKI_TEST_PROXY", raising=False)
    by_env = config_with(
        {"client_secret_env": "PKI_EXPORTER_CLIENT_SECRET"}, proxy_credentials_env="PKI_TEST_PROXY"
    )
    where = "tenants[0].proxy_credentials_env"
    assert check_config(by_env) == [f"{where}: environment variable PKI_TEST_PROXY is not set"]
    monkeypatch.setenv("PKI_TEST_PROXY", "")
    assert check_config(by_env) == [f"{where}: environment variable PKI_TEST_PROXY is empty"]
    monkeypatch.setenv("PKI_TEST_PROXY", SECRET)
    assert check_config(by_env) == [
        f"{where}: environment variable PKI_TEST_PROXY holds no user:password"
    ]
    monkeypatch.setenv("PKI_TEST_PROXY", f"svc:{SECRET}")
    assert check_config(by_env) == []

    file = tmp_path / "proxy"
    by_file = config_with(
        {"client_secret_env": "PKI_EXPORTER_CLIENT_SECRET"}, proxy_credentials_file=str(file)
    )
    where = "tenants[0].proxy_credentials_file"
    assert check_config(by_file) == [f'{where}: cannot read "{file}": No such file or directory']
    file.write_text(" \n")
    assert check_config(by_file) == [f'{where}: "{file}" is empty']
    file.write_text(SECRET)
    assert check_config(by_file) == [f'{where}: "{file}" holds no user:password']
    file.write_text(f"svc:{SECRET}\n")
    assert check_config(by_file) == []
    file.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        assert check_config(by_file) == [f'{where}: cannot read "{file}": Permission denied']


# ----------------------------------------------------------------------------- secrets


def test_no_secret_value_in_any_message_or_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets put where they belong and where they do not: never echoed back."""
    monkeypatch.setenv("PKI_TEST_SECRET", SECRET)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    texts: list[str] = []
    broken = [
        {"client_secret_env": SECRET},
        {"client_secret_env": SECRET, "client_secret": SECRET},
        {"client_secret": [SECRET]},
        {"client_secret": {SECRET: 1}},
        {"certificate": {"passphrase_env": SECRET, "pfx_file": "/p"}},
        {"certificate": {"pfx_file": "/p", "passphrase_env": "P", "passphrase_file": "/f"}},
        {"managed_identity": {"client_id": SECRET}},
        {"client_secret_file": 1, "client_secret": SECRET},
    ]
    for proxy in (f"http://user:{SECRET}@proxy:3128", f"http://proxy:3128/{SECRET}"):
        with pytest.raises(ConfigError) as caught:
            parse_config(document(tenant(proxy_url=proxy)))
        texts.append(str(caught.value))
    for credential in broken:
        with pytest.raises(ConfigError) as caught:
            parse_config(document(tenant(credential=credential)))
        texts.append(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        parse_config(document(tenant(client_id=SECRET)))
    texts.append(str(caught.value))
    inline = tmp_path / "inline.yaml"
    inline.write_text(inline_secret_document() + f"# {SECRET[:3]}\n")
    os.chmod(inline, 0o644)
    loaded = load_config(str(inline))
    texts += loaded.warnings
    texts.append(repr(loaded))
    for credential in (
        {"client_secret_env": "PKI_TEST_SECRET"},
        {"client_secret_file": str(secret_file)},
        {
            "certificate": {
                "private_key_file": str(secret_file),
                "certificate_file": str(secret_file),
            }
        },
        {"workload_identity": {"token_file": str(secret_file)}},
    ):
        texts += check_config(config_with(credential))
    texts += check_config(
        config_with(
            {"managed_identity": {}}, client_id=DROP, proxy_credentials_env="PKI_TEST_SECRET"
        )
    )
    texts += check_config(
        config_with(
            {"managed_identity": {}}, client_id=DROP, proxy_credentials_file=str(secret_file)
        )
    )
    assert len(texts) > 10
    assert [text for text in texts if SECRET in text] == []
