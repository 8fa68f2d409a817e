"""Life cycle of the real process: SIGTERM, SIGHUP, POST /-/reload, invalid configs.

These tests run the exporter on the real clock (no PKI_EXPORTER_FAKE_NOW): the reload
timestamp is a wall-clock time and must move on a successful reload, and only then.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pki_simulator import Fault

from tests.exporter_proc import (
    ExporterProcess,
    Samples,
    base_env,
    tenant_config,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

RELOAD_OK = "intune_cloudpki_config_last_reload_successful"
RELOAD_AT = "intune_cloudpki_config_last_reload_success_timestamp_seconds"


@pytest.fixture
def run_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """pki-exporter on the real clock; stopped after the test."""
    started: list[ExporterProcess] = []

    def start(*args: str, env: dict[str, str], wait_ready: bool = True) -> ExporterProcess:
        proc = ExporterProcess(
            args=[*args, "--web.listen-address", "127.0.0.1:0"],
            env=base_env(**env),
            cwd=tmp_path,
        )
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in started:
        proc.stop()


def one(samples: Samples, metric: str, **labels: str) -> float:
    found = [
        v for k, v in samples.items() if k[0] == metric and labels.items() <= dict(k[1]).items()
    ]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def labels(samples: Samples, metric: str, key: str) -> set[str]:
    return {dict(k[1])[key] for k in samples if k[0] == metric}


def setup_two_tenants(
    start_simulator: Any, tmp_path: Path, **refresh: Any
) -> tuple[Any, Path, dict[str, str], list[dict[str, Any]]]:
    sim = start_simulator(seed=51, tenants=2, cas=2, certificates=200)
    entries = [tenant_config(sim, t, t.name) for t in sim.tenants]
    env = {f"SECRET_{t.name.upper()}": t.client_secret for t in sim.tenants}
    cfg = write_config(
        tmp_path / "config.yaml",
        entries[:1],
        refresh={"interval": "1s", "timeout": "5s", "concurrency": 4, **refresh},
    )
    return sim, cfg, env, entries


def rewrite(cfg: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(cfg.read_text())
    change(doc)
    tmp = cfg.with_name(cfg.name + ".new")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(cfg)


def stop_and_time(exporter: ExporterProcess, signum: int = signal.SIGTERM) -> tuple[int, float]:
    assert exporter.proc is not None
    began = time.monotonic()
    exporter.signal(signum)
    code = exporter.proc.wait(timeout=30)
    return code, time.monotonic() - began


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_cleanly(start_simulator: Any, run_exporter: Any, tmp_path: Path) -> None:
    _, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path)
    exporter = run_exporter("--config.file", str(cfg), env=env)
    exporter.wait_for(lambda s: one(s, "intune_cloudpki_tenant_up") == 1)
    code, took = stop_and_time(exporter)
    log = exporter.stop()
    assert code == 0, log
    assert took < 3.0, took
    assert "msg=stopping" in log
    assert "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(exporter.url + "/healthz", timeout=2)


def test_sigint_stops_cleanly_too(start_simulator: Any, run_exporter: Any, tmp_path: Path) -> None:
    _, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path)
    exporter = run_exporter("--config.file", str(cfg), env=env)
    code, took = stop_and_time(exporter, signal.SIGINT)
    assert code == 0 and took < 3.0, (code, took, exporter.log())


def test_sigterm_during_a_slow_refresh(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    """A request hanging on Graph (60 s timeout) must not hold the process when asked to stop."""
    sim, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path, timeout="60s")
    slow = sim.faults.add(Fault(kind="slow", delay=45.0, page=0, ca_id=sim.tenants[0].cas[0].id))
    exporter = run_exporter("--config.file", str(cfg), env=env, wait_ready=False)
    deadline = time.monotonic() + 30
    while not sim.faults.fired(slow):  # the request reached Graph; its answer is 45 s away
        assert time.monotonic() < deadline, exporter.log()
        time.sleep(0.05)
    code, took = stop_and_time(exporter)
    log = exporter.stop()
    assert code == 0, log
    assert took < 3.0, (took, log)
    assert "abandoning Graph requests in flight" in log
    assert "Traceback" not in log


#: Loaded by the exporter's interpreter at start (PYTHONPATH): writes a marker from an
#: atexit hook, which runs only when the process ends through normal interpreter shutdown
#: (never after os._exit).
ATEXIT_HOOK = """\
import atexit, os
_marker = os.environ.get("ATEXIT_MARKER")
if _marker:
    atexit.register(lambda: open(_marker, "w").write("normal interpreter shutdown\\n"))
"""


def test_sigterm_during_a_slow_refresh_exits_through_normal_shutdown(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    """The refresher abandons the hung request itself: no os._exit, atexit handlers run."""
    sim, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path, timeout="60s")
    slow = sim.faults.add(Fault(kind="slow", delay=45.0, page=0, ca_id=sim.tenants[0].cas[0].id))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ATEXIT_HOOK)
    marker = tmp_path / "atexit-ran"
    env = {**env, "PYTHONPATH": str(hook), "ATEXIT_MARKER": str(marker)}
    exporter = run_exporter("--config.file", str(cfg), env=env, wait_ready=False)
    deadline = time.monotonic() + 30
    while not sim.faults.fired(slow):  # the request reached Graph; its answer is 45 s away
        assert time.monotonic() < deadline, exporter.log()
        time.sleep(0.05)
    code, took = stop_and_time(exporter)
    log = exporter.stop()
    assert code == 0, log
    assert took < 3.0, (took, log)
    assert marker.read_text() == "normal interpreter shutdown\n", log
    (line,) = [line for line in log.splitlines() if "abandoning Graph requests in flight" in line]
    assert "logger=pki_exporter.refresher" in line and "threads=1" in line, line
    assert "threads that cannot be stopped" not in log
    assert "Traceback" not in log


def test_sigterm_during_retry_waits(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    sim, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path, timeout="60s")
    throttle = sim.faults.add(Fault(kind="throttle", retry_after=250))
    exporter = run_exporter("--config.file", str(cfg), env=env, wait_ready=False)
    deadline = time.monotonic() + 30
    while not sim.faults.fired(throttle):
        assert time.monotonic() < deadline, exporter.log()
        time.sleep(0.05)
    code, took = stop_and_time(exporter)
    assert code == 0 and took < 3.0, (code, took, exporter.log())


# --------------------------------------------------------------------------- SIGHUP, reload


def test_sighup_reloads_added_tenant_and_renamed_ca(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    sim, cfg, env, entries = setup_two_tenants(start_simulator, tmp_path)
    exporter = run_exporter("--config.file", str(cfg), env=env)
    first = exporter.wait_for(lambda s: labels(s, "intune_cloudpki_tenant_up", "tenant") != set())
    assert labels(first, "intune_cloudpki_tenant_up", "tenant") == {"contoso"}
    assert one(first, RELOAD_OK) == 1
    loaded_at = one(first, RELOAD_AT)

    # Add the second tenant, and pin contoso's first CA under a name of our own.
    renamed = sim.tenants[0].cas[0].id

    def change(doc: dict[str, Any]) -> None:
        doc["tenants"][0]["certification_authorities"] = [
            {"id": renamed, "name": "Renamed CA"},
            {"id": sim.tenants[0].cas[1].id},
        ]
        doc["tenants"].append(entries[1])

    rewrite(cfg, change)
    exporter.signal(signal.SIGHUP)
    samples = exporter.wait_for(
        lambda s: (
            labels(s, "intune_cloudpki_tenant_up", "tenant") == {"contoso", "fabrikam"}
            and one(s, "intune_cloudpki_refresh_success", ca_id=renamed, ca="Renamed CA") == 1
            if [k for k in s if dict(k[1]).get("ca") == "Renamed CA"]
            else False
        ),
        what="reloaded config in /metrics",
    )
    assert one(samples, "intune_cloudpki_tenant_up", tenant="fabrikam") == 1
    assert one(samples, RELOAD_OK) == 1
    assert one(samples, RELOAD_AT) > loaded_at
    # The old label is gone for good: no series carries it any more.
    names = labels(samples, "intune_cloudpki_ca_info", "ca")
    assert "Renamed CA" in names
    assert sim.tenants[0].cas[0].display_name not in names
    assert "config reloaded" in exporter.log()


def test_post_reload_needs_the_lifecycle_flag(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    _, cfg, env, entries = setup_two_tenants(start_simulator, tmp_path)
    locked = run_exporter("--config.file", str(cfg), env=env)
    refused = httpx.post(locked.url + "/-/reload", timeout=10)
    assert refused.status_code == 403
    assert refused.text == "Lifecycle API is not enabled.\n"

    open_ = run_exporter("--config.file", str(cfg), "--web.enable-lifecycle", env=env)
    assert httpx.get(open_.url + "/-/reload", timeout=10).status_code == 405
    rewrite(cfg, lambda doc: doc["tenants"].append(entries[1]))
    for method in ("POST", "PUT"):
        answer = httpx.request(method, open_.url + "/-/reload", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.text == "config reloaded\n"
    samples = open_.wait_for(
        lambda s: labels(s, "intune_cloudpki_tenant_up", "tenant") == {"contoso", "fabrikam"},
        what="second tenant after POST /-/reload",
    )
    assert one(samples, RELOAD_OK) == 1
    # The exporter without the flag never reloaded: it still has one tenant.
    assert labels(locked.scrape(), "intune_cloudpki_tenant_up", "tenant") == {"contoso"}


@pytest.mark.parametrize("how", ["sighup", "post"])
def test_invalid_config_is_refused_and_the_running_one_kept(
    start_simulator: Any, run_exporter: Any, tmp_path: Path, how: str
) -> None:
    sim, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path)
    exporter = run_exporter("--config.file", str(cfg), "--web.enable-lifecycle", env=env)
    before = exporter.wait_for(lambda s: one(s, "intune_cloudpki_tenant_up") == 1)
    loaded_at = one(before, RELOAD_AT)
    good = cfg.read_text()

    def reload() -> httpx.Response | None:
        if how == "post":
            return httpx.post(exporter.url + "/-/reload", timeout=30)
        exporter.signal(signal.SIGHUP)
        return None

    # A typo, then a file that is not YAML at all: both refused.
    for broken, message in (
        (good.replace("client_id:", "client_ld:", 1), "tenants[0].client_ld: unknown key"),
        ("tenants: [\n", "while parsing a flow node"),
    ):
        cfg.write_text(broken)
        answer = reload()
        if answer is not None:
            assert answer.status_code == 500
            assert answer.text.startswith("failed to reload config: ")
            assert message in answer.text
        # (The second refusal finds the gauge at 0 already: the log says when it was read.)
        samples = exporter.wait_for(
            lambda s: one(s, RELOAD_OK) == 0 and message in exporter.log(),
            what=f"reload refused, logging {message!r}",
        )
        assert one(samples, RELOAD_AT) == loaded_at  # only a success moves it
    # The running config goes on: the tenant keeps being refreshed.
    mark = len(sim.log)
    exporter.wait_for(
        lambda s: any(e.endpoint == "leaves" and e.status == 200 for e in sim.log[mark:]),
        what="refreshes go on",
    )
    samples = exporter.scrape()
    assert one(samples, "intune_cloudpki_tenant_up", tenant="contoso") == 1
    assert one(samples, RELOAD_OK) == 0
    # A good file again: 1, and a new timestamp.
    cfg.write_text(good)
    answer = reload()
    if answer is not None:
        assert answer.status_code == 200
    exporter.wait_for(
        lambda s: one(s, RELOAD_OK) == 1 and one(s, RELOAD_AT) > loaded_at,
        what="reload accepted",
    )
    assert exporter.proc is not None and exporter.proc.poll() is None


def test_reloads_in_a_burst_leave_one_working_refresher(
    start_simulator: Any, run_exporter: Any, tmp_path: Path
) -> None:
    """Ten SIGHUPs in a row while refreshes run: no thread or connection piles up."""
    sim, cfg, env, _ = setup_two_tenants(start_simulator, tmp_path)
    exporter = run_exporter("--config.file", str(cfg), env=env)
    exporter.wait_for(lambda s: one(s, "intune_cloudpki_tenant_up") == 1)
    assert exporter.proc is not None
    pid = exporter.proc.pid

    def threads() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1]
        )

    baseline = threads()
    for _ in range(10):
        exporter.signal(signal.SIGHUP)
        time.sleep(0.05)
    # The exporter handles the signals one after the other, each reload stopping the
    # refresher before it: the window starts once the last reload was logged (the request
    # log's length at the moment a new "config reloaded" line is seen), so that it holds
    # the listings of the last refresher alone.
    reloads, mark = -1, 0

    def settled(_: Samples) -> bool:
        nonlocal reloads, mark
        seen = exporter.log().count('msg="config reloaded"')
        if seen != reloads:
            reloads, mark = seen, len(sim.log)
        return sum(1 for e in sim.log[mark:] if e.endpoint == "ca_list") >= 4

    exporter.wait_for(settled, what="cycles after the last reload of the burst")
    assert reloads >= 1
    samples = exporter.scrape()
    assert one(samples, RELOAD_OK) == 1
    assert one(samples, "intune_cloudpki_tenant_up", tenant="contoso") == 1
    # One cycle a second (1 s +-5 %) from the last refresher alone: an old refresher left
    # running would list the CAs in between, ten of them ten times a second. Times are
    # when the listings reached the simulator's kernel (its thread may take them late).
    window = [e.sent for e in sim.log[mark:] if e.endpoint == "ca_list"]
    assert len(window) - 1 <= (window[-1] - window[0]) / 0.8, window
    assert threads() <= baseline + 4, (baseline, threads())


# --------------------------------------------------------------------------- the demo


def test_a_reload_in_demo_mode_says_there_is_no_file_and_keeps_running(
    run_exporter: Any, tmp_path: Path
) -> None:
    """The demo's config is built in: SIGHUP and POST /-/reload say so in one line each,
    nothing fails, the demo goes on; on SIGTERM its simulator's files (keys) are gone."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    exporter = run_exporter("--demo", "--web.enable-lifecycle", env={"TMPDIR": str(temp)})
    assert [p.name[:16] for p in temp.iterdir()] == ["pki-exporter-sim"]
    exporter.signal(signal.SIGHUP)
    answer = httpx.post(exporter.url + "/-/reload", timeout=30)
    assert answer.status_code == 500
    assert answer.text == (
        "failed to reload config: no config file to reload (the demo's config is built in)\n"
    )
    samples = exporter.wait_for(lambda s: one(s, "intune_cloudpki_tenant_up") == 1)
    assert one(samples, RELOAD_OK) == 1
    code, _took = stop_and_time(exporter)
    log = exporter.stop()
    assert code == 0, log
    reloads = [line for line in log.splitlines() if "reload" in line]
    assert len(reloads) == 2, reloads  # the SIGHUP's and the POST's
    for line in reloads:
        assert line.endswith(
            ' level=warn logger=pki_exporter.app msg="config not reloaded" '
            'reason="no config file to reload (the demo\'s config is built in)"'
        ), line
    assert "<demo>: cannot read" not in log and "Traceback" not in log
    assert list(temp.iterdir()) == []
