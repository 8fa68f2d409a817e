"""Shared fixtures: a simulated tenant in this process, pki-exporter as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import kinds, rsakeys
from tests.exporter_proc import ExporterProcess, base_env

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
"""The frozen "now" of the end-to-end tests: the simulator's dates and the exporter's clock."""
FAKE_NOW = ANCHOR.isoformat()


def _share_httpx_default_ssl_context() -> None:
    """One SSL context for every httpx client of this process that verifies with the
    default roots and sends no client certificate.

    httpx builds a context for each client, loading certifi's roots (30 ms of CPU), even
    for an ``http://`` URL, so the tests' ``httpx.get`` calls (a scrape every 100 ms while
    waiting) cost a quarter of the end-to-end tests' CPU. A context with a ``ca_bundle``,
    a client certificate or ``verify=False`` is still made per client, and so is every
    context of the exporter's own code (which passes its own). If httpx renames the
    function, nothing is shared and the tests are only slower.
    """
    try:
        from httpx._transports import default as transports
    except ImportError:  # pragma: no cover
        return
    build = getattr(transports, "create_ssl_context", None)
    if build is None:  # pragma: no cover
        return
    shared: dict[tuple[bool, str | None, str | None], Any] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        env = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        key = (trust_env, *(env if trust_env else (None, None)))
        if key not in shared:
            shared[key] = build(verify=verify, cert=cert, trust_env=trust_env)
        return shared[key]

    transports.create_ssl_context = create_ssl_context  # type: ignore[attr-defined]


_share_httpx_default_ssl_context()


_RSA_KEYS = "pki_simulator_rsa_keys"
_RSA_PEM = pytest.StashKey[bytes]()


def pytest_configure(config: pytest.Config) -> None:
    """Every process of the session hands its simulators the session's RSA keys
    (tests/rsakeys.py): the first process reads or makes them, its xdist workers get them
    with their start-up input (`pytest_configure_node`)."""
    from pki_simulator import tls

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        keys = rsakeys.parse(str(workerinput.get(_RSA_KEYS, "")).encode("ascii"))
    elif config.getoption("collectonly") or config.getoption("help"):
        return  # nothing will run
    else:
        path = None
        cache = getattr(config, "cache", None)
        if cache is not None:  # absent with -p no:cacheprovider
            with contextlib.suppress(OSError):
                path = Path(cache.mkdir("pki-simulator")) / rsakeys.FILE_NAME
        keys = rsakeys.make(path)
        config.stash[_RSA_PEM] = rsakeys.pem(keys)
    if keys is not None:
        tls.share_rsa_keys(keys)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: a worker's start-up input carries the keys (an
    optional hook: ``-p no:xdist`` runs without it)."""
    node.workerinput[_RSA_KEYS] = node.config.stash.get(_RSA_PEM, b"").decode("ascii")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its kind (unit, e2e, system) from the table in tests/kinds.py,
    and order them, longest first (kinds.rank).

    A test of an unclassified module gets no kind, so `make unit/e2e/system` leave it out;
    tests/test_kinds.py fails on it and says where to add it.
    """
    ranks: dict[str, tuple[int, int]] = {}
    for item in items:
        function = getattr(item, "originalname", item.name)
        if not item.path.resolve().is_relative_to(kinds.TESTS_DIR):
            continue  # a test file outside tests/, named on the command line
        module = kinds.module_name(item.path)
        kind = kinds.kind_of(module, function)
        if kind is not None:
            item.add_marker(kind)
        ranks[item.nodeid] = kinds.rank(module, function, kind)
    # The longest first, the unit tests last (kinds.LONG_FIRST); stable, so the same order
    # in every pytest-xdist worker, and within a module as written.
    items.sort(key=lambda item: ranks.get(item.nodeid, (1, len(kinds.ORDER_OF_KINDS))))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the groups of tests/kinds.py.

    pytest-xdist 3.8 groups by an ``@group`` suffix that it writes into the node id, which
    pytest 9 no longer reads back (the marks would be ignored silently); this scheduler
    takes each test's group from the table instead.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class KindsGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            function = rest.split("[", 1)[0].split("::")[-1]
            module = path.removeprefix("tests/")
            return kinds.group_of(module, function) or nodeid

    return KindsGroupScheduling(config, log)


def _children() -> dict[int, str]:
    """This process's live children (pid -> command line), from /proc."""
    found: dict[int, str] = {}
    me = str(os.getpid())
    for stat in os.scandir("/proc"):
        if not stat.name.isdigit():
            continue
        try:
            with open(f"/proc/{stat.name}/stat") as f:
                # pid (comm) state ppid ...: comm may hold spaces and parentheses
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            if ppid == me and state != "Z":
                cmdline = open(f"/proc/{stat.name}/cmdline", "rb").read()  # noqa: SIM115
                found[int(stat.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """No test leaves a process behind: a child still running when the session's last
    fixture is torn down is killed, named, and fails the run (as an error in the teardown
    of the last test; each pytest-xdist worker checks its own children)."""
    yield
    left = _children()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    names = "\n".join(f"  {pid}: {cmd[:300]}" for pid, cmd in sorted(left.items()))
    assert not left, f"processes left running by the tests (now killed):\n{names}"


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Any]]:
    """Start simulators (``Simulator.generate`` keywords, or ``spec=DatasetSpec``); stopped after the test."""
    from pki_simulator import Simulator

    started: list[Any] = []

    def start(spec: Any = None, **kwargs: Any) -> Any:
        if spec is not None:
            sim = Simulator.from_spec(spec)
        else:
            kwargs.setdefault("anchor", ANCHOR)
            sim = Simulator.generate(**kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start ``pki-exporter`` subprocesses with a frozen clock; stopped (log kept) after the test."""
    started: list[ExporterProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        port: int = 0,
        **kw: Any,
    ) -> ExporterProcess:
        environment = base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, **(env or {}))
        proc = ExporterProcess(
            args=[*args, "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
            env=environment,
            cwd=tmp_path,
            port=port,
            **kw,
        )
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in started:
        proc.stop()
