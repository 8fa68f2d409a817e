"""pki_exporter.runtime.workers: the daemon pool the refresher can leave behind."""

from __future__ import annotations

import threading
import time

import pytest

from pki_exporter.runtime.workers import Workers

pytestmark = pytest.mark.timeout(30)


def test_calls_run_on_at_most_size_named_daemon_threads() -> None:
    workers = Workers(2, "pki-test")
    gate = threading.Event()
    seen: list[str] = []

    def job(n: int) -> int:
        gate.wait(5)
        seen.append(threading.current_thread().name)
        return n * 10

    futures = [workers.submit(job, n) for n in range(5)]
    gate.set()
    assert [f.result(5) for f in futures] == [0, 10, 20, 30, 40]
    assert sorted(set(seen)) == ["pki-test-0", "pki-test-1"]
    workers.shutdown()
    assert workers.join(time.monotonic() + 5) == []


def test_an_exception_goes_to_the_future() -> None:
    workers = Workers(1, "pki-test")

    def boom() -> None:
        raise ValueError("no")

    future = workers.submit(boom)
    with pytest.raises(ValueError, match="no"):
        future.result(5)
    assert workers.submit(lambda: 1).result(5) == 1  # the worker lives on
    workers.shutdown()
    assert workers.join(time.monotonic() + 5) == []


def test_shutdown_cancels_what_has_not_started_and_refuses_more() -> None:
    workers = Workers(1, "pki-test")
    gate = threading.Event()
    running = workers.submit(gate.wait, 5)
    queued = workers.submit(lambda: "never")
    deadline = time.monotonic() + 5
    while not running.running():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    workers.shutdown()
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="the workers are shut down"):
        workers.submit(lambda: 1)
    gate.set()
    assert running.result(5) is True
    assert workers.join(time.monotonic() + 5) == []


def test_join_returns_the_busy_workers_as_daemons_after_its_deadline() -> None:
    workers = Workers(1, "pki-test")
    gate = threading.Event()
    started = threading.Event()

    def hang() -> None:
        started.set()
        gate.wait(10)

    workers.submit(hang)
    assert started.wait(5)
    workers.shutdown()
    busy = workers.join(time.monotonic() + 0.1)
    assert [(t.name, t.daemon, t.is_alive()) for t in busy] == [("pki-test-0", True, True)]
    gate.set()
    assert workers.join(time.monotonic() + 5) == []
