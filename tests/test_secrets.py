"""No secret leaves the process: not in logs (logfmt or JSON, at debug level), not on
``/``, ``/metrics``, ``/ready``, not in ``--config.check`` or ``--once`` output.

Every credential kind runs at once, each tenant with a recognisable secret (a canary),
while faults make the exporter log what it logs on bad days: 401s and token refreshes,
refused secrets, throttling, broken pages. Then every output is searched for each secret,
each access token the simulator issued, the federated assertion, the PFX passphrase and
the private key: whole, and by any 12-character piece of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from pki_simulator import Fault, generate_spec

from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import ExporterProcess, base_env, tenant_config, write_config

pytestmark = pytest.mark.timeout(180)

WINDOW = 12
CANARIES = (
    "Cnry1~SECRET.env_0123456789abcdefABCDEF.x",
    "Cnry2~SECRET.file_0123456789abcdefABCDE.y",
    "Cnry3~SECRET.cert_0123456789abcdefABCDE.z",  # unused by its tenant: a cert credential
    "Cnry4~SECRET.wi_0123456789abcdefABCDEFG.w",  # unused by its tenant: workload identity
    "Cnry5~SECRET.inline_0123456789abcdefAB.v",
)
WRONG = "Cnry9~WRONG.secret_0123456789abcdefAB.q"


def pieces(secret: str, size: int = WINDOW) -> set[str]:
    """The secret and every ``size``-character piece of it."""
    if len(secret) <= size:
        return {secret}
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def jwt_pieces(token: str) -> set[str]:
    """A JWT's payload and signature, in pieces (the header is the same for every token)."""
    parts = token.split(".")
    found: set[str] = set()
    for part in parts[1:]:
        found |= pieces(part, 24)
    return found or pieces(token, 24)


def assert_clean(texts: dict[str, str], forbidden: dict[str, set[str]]) -> None:
    leaks = [
        f"{what} ({piece!r}) in {where}"
        for where, text in texts.items()
        for what, found in forbidden.items()
        for piece in found
        if piece in text
    ]
    assert not leaks, "\n".join(leaks[:20])


def start_sim(start_simulator: Any, seed: int, tenants: int) -> Any:
    spec = generate_spec(seed=seed, anchor=ANCHOR, tenants=tenants, cas=2, certificates=150)
    spec = replace(
        spec,
        tenants=tuple(
            replace(t, client_secret=CANARIES[i % len(CANARIES)])
            for i, t in enumerate(spec.tenants)
        ),
    )
    return start_simulator(spec=spec)


def every_credential(sim: Any, tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Four tenants: secret in the environment, secret in a file, PFX with a passphrase,
    workload identity. Returns the config entries and the environment."""
    env_t, file_t, cert_t, wi_t = sim.tenants[:4]
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(file_t.client_secret + "\n")
    secret_file.chmod(0o600)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(sim.issue_federated_token(wi_t.tenant_id))
    entries = [
        tenant_config(sim, env_t, "env"),
        tenant_config(sim, file_t, "file", credential={"client_secret_file": str(secret_file)}),
        tenant_config(
            sim,
            cert_t,
            "cert",
            credential={
                "certificate": {"pfx_file": str(cert_t.pfx_file), "passphrase_env": "PFX_PASS"}
            },
        ),
        tenant_config(
            sim, wi_t, "wi", credential={"workload_identity": {"token_file": str(token_file)}}
        ),
    ]
    env = {"SECRET_ENV": env_t.client_secret, "PFX_PASS": cert_t.pfx_passphrase}
    return entries, env


def forbidden_of(sim: Any, tmp_path: Path, extra: tuple[str, ...] = ()) -> dict[str, set[str]]:
    forbidden: dict[str, set[str]] = {}
    for tenant in sim.tenants:
        forbidden[f"client secret of {tenant.name}"] = pieces(tenant.client_secret)
        forbidden[f"PFX passphrase of {tenant.name}"] = pieces(tenant.pfx_passphrase)
        key = tenant.key_file.read_text()
        body = "".join(line for line in key.splitlines() if "PRIVATE KEY" not in line)
        forbidden[f"private key of {tenant.name}"] = pieces(body, 24)
    tokens = sim.issued_tokens()
    assert tokens, "the simulator issued no token: nothing was tested"
    for index, token in enumerate(tokens):
        forbidden[f"access token #{index}"] = jwt_pieces(token)
    token_file = tmp_path / "azure-identity-token"
    if token_file.exists():
        forbidden["federated assertion"] = jwt_pieces(token_file.read_text())
    for index, secret in enumerate(extra):
        forbidden[f"extra secret #{index}"] = pieces(secret)
    return forbidden


def pages(exporter: ExporterProcess) -> dict[str, str]:
    texts = {}
    for path in ("/", "/metrics", "/ready", "/healthz", "/certificates"):
        response = exporter.get(path)
        texts[path] = response.text + json.dumps(dict(response.headers))
    return texts


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pki_exporter", *args],
        env=base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_every_credential_under_faults_leaks_nothing(
    start_simulator: Any, start_exporter: Any, tmp_path: Path, log_format: str
) -> None:
    sim = start_sim(start_simulator, seed=61, tenants=4)
    entries, env = every_credential(sim, tmp_path)
    cfg = write_config(tmp_path / "config.yaml", entries)
    exporter = start_exporter("--config.file", str(cfg), "--log.format", log_format, env=env)
    exporter.wait_for(
        lambda s: (
            sum(1 for k, v in s.items() if k[0] == "intune_cloudpki_refresh_success" and v) == 8
        ),
        what="every tenant refreshed",
    )
    # A bad day: every token revoked (401, then a fresh token), a page answering 401 every
    # time (one retry with a fresh token, then auth), the secret of one tenant refused,
    # the token endpoint of another throttled, garbage on a page, Graph throttling.
    env_t, file_t, cert_t, wi_t = sim.tenants[:4]
    faults = [
        Fault(kind="page_error", status=401, ca_id=env_t.cas[0].id, page=0),
        Fault(kind="token_error", tenant_id=file_t.tenant_id),
        Fault(kind="token_error", tenant_id=cert_t.tenant_id, status=429, retry_after=1),
        Fault(kind="malformed_json", ca_id=wi_t.cas[0].id),
        Fault(kind="throttle", ca_id=wi_t.cas[1].id, retry_after=0, times=3),
    ]
    for fault in faults:
        sim.faults.add(fault)
    sim.faults.add(Fault(kind="token_expiry"))
    wait_until(
        lambda: all(sim.faults.fired(f) >= 2 for f in faults[:4]),
        "every fault answered twice",
    )
    # The federated token is rotated on disk: the new one must not leak either.
    (tmp_path / "azure-identity-token").write_text(sim.issue_federated_token(wi_t.tenant_id))
    sim.faults.add(Fault(kind="token_expiry", tenant_id=wi_t.tenant_id))
    mark = len(sim.log)
    wait_until(
        lambda: any(
            e.endpoint == "token" and e.tenant_id == wi_t.tenant_id and e.status == 200
            for e in sim.log[mark:]
        ),
        "a token for the rotated assertion",
    )
    texts = pages(exporter)
    sim.faults.clear()
    log = exporter.stop()
    texts["log"] = log
    # The log saw the failures it should have, with their AADSTS codes and Graph errors ...
    assert "invalid_client" in log and "AADSTS7000215" in log
    assert "temporarily_unavailable" in log
    assert "graph answered 401; retrying with a fresh token" in log
    assert "leaf page is not valid JSON" in log
    if log_format == "json":
        assert all(json.loads(line) for line in log.splitlines() if line.startswith("{"))
    # ... and not one secret, passphrase, key, assertion or token.
    assert_clean(texts, forbidden_of(sim, tmp_path))


def test_wrong_secret_and_config_check_and_once(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = start_sim(start_simulator, seed=62, tenants=4)
    entries, env = every_credential(sim, tmp_path)
    entries.append(
        tenant_config(
            sim, sim.tenants[0], "wrong", credential={"client_secret_env": "WRONG_SECRET"}
        )
    )
    env["WRONG_SECRET"] = WRONG
    cfg = write_config(tmp_path / "config.yaml", entries)
    texts: dict[str, str] = {}
    check = run(["--config.file", str(cfg), "--config.check"], env, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    texts["--config.check"] = check.stdout + check.stderr
    for fmt in ("logfmt", "json"):
        once = run(
            ["--config.file", str(cfg), "--once", "--log.level", "debug", "--log.format", fmt],
            env,
            tmp_path,
        )
        assert once.returncode == 1  # the tenant with the wrong secret is down
        assert 'intune_cloudpki_tenant_up{tenant="wrong"} 0.0' in once.stdout
        assert "AADSTS7000215" in once.stderr
        texts[f"--once {fmt}"] = once.stdout + once.stderr
    exporter = start_exporter("--config.file", str(cfg), env=env)
    exporter.wait_for(
        lambda s: s.get(("intune_cloudpki_tenant_up", (("tenant", "wrong"),))) == 0,
        what="the wrong secret refused",
    )
    texts.update(pages(exporter))
    assert "invalid_client" in texts["/"]
    texts["log"] = exporter.stop()
    assert_clean(texts, forbidden_of(sim, tmp_path, extra=(WRONG,)))


@pytest.mark.parametrize(
    ("mode", "readers"),
    [(0o644, "group and others"), (0o600, None)],
    ids=["0644", "0600"],
)
def test_inline_secret_warns_and_is_never_shown(
    start_simulator: Any, start_exporter: Any, tmp_path: Path, mode: int, readers: str | None
) -> None:
    sim = start_sim(start_simulator, seed=63, tenants=1)
    tenant = sim.tenants[0]
    entry = tenant_config(sim, tenant, "inline", credential={"client_secret": tenant.client_secret})
    cfg = write_config(tmp_path / "config.yaml", [entry])
    cfg.chmod(mode)
    assert tenant.client_secret in cfg.read_text()
    exporter = start_exporter("--config.file", str(cfg))
    exporter.wait_for(
        lambda s: s.get(("intune_cloudpki_tenant_up", (("tenant", "inline"),))) == 1,
        what="inline secret works",
    )
    texts = pages(exporter)
    log = exporter.stop()
    texts["log"] = log
    check = run(["--config.file", str(cfg), "--config.check"], {}, tmp_path)
    assert check.returncode == 0
    texts["--config.check"] = check.stdout + check.stderr
    advice = "tenants[0].credential.client_secret: secret written inline in the config file"
    assert advice in log and advice in check.stdout
    warning = f"{cfg}: holds an inline client secret and is readable by"
    if readers is None:
        assert warning not in log and warning not in check.stdout
    else:
        expected = f"{warning} {readers} (mode {mode:04o})"
        # At start, in the exporter's own log, as a warning ...
        (line,) = [line for line in log.splitlines() if expected in line]
        assert "level=warn " in line
        # ... and in the verdict of --config.check.
        assert f"warning: {expected}" in check.stdout
    assert_clean(texts, forbidden_of(sim, tmp_path))


def test_reload_with_a_new_inline_secret_warns_again(
    start_simulator: Any, start_exporter: Any, tmp_path: Path
) -> None:
    """A config reloaded to an inline secret in a world-readable file warns at the reload."""
    sim = start_sim(start_simulator, seed=64, tenants=1)
    tenant = sim.tenants[0]
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, tenant, "contoso")])
    exporter = start_exporter(
        "--config.file",
        str(cfg),
        "--web.enable-lifecycle",
        env={"SECRET_CONTOSO": tenant.client_secret},
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["tenants"][0]["credential"] = {"client_secret": tenant.client_secret}
    cfg.write_text(yaml.safe_dump(doc))
    cfg.chmod(0o644)
    import httpx

    answer = httpx.post(exporter.url + "/-/reload", timeout=30)
    assert answer.status_code == 200
    assert tenant.client_secret not in answer.text
    texts = pages(exporter)
    texts["log"] = exporter.stop()
    assert "holds an inline client secret and is readable by group and others" in texts["log"]
    assert_clean(texts, forbidden_of(sim, tmp_path))


def test_the_leak_check_finds_pieces() -> None:
    """The search itself: a fragment from the middle of a secret or a token is found."""
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwa2ktZXhwb3J0ZXIiLCJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
    forbidden = {"secret": pieces(CANARIES[0]), "token": jwt_pieces(token)}
    assert_clean({"log": "msg=ok error=none"}, forbidden)
    for text in (f"x={CANARIES[0][7:19]}", f"payload {token.split('.')[1][10:40]} cut"):
        with pytest.raises(AssertionError):
            assert_clean({"log": text}, forbidden)
