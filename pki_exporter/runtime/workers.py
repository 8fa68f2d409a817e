"""A pool of daemon worker threads that can be left behind when they cannot be stopped.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, so
one worker waiting on a request (up to ``refresh.timeout``) holds a stopping process for
that long. These workers are daemon threads: `join` waits for them within a bound, and
whatever is still blocked after it does not keep the process from exiting normally.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Workers:
    """At most ``size`` daemon threads named ``<name>-<n>``, started as work arrives."""

    def __init__(self, size: int, name: str) -> None:
        self._size = max(1, size)
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a worker; RuntimeError once `shutdown` was called."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the workers are shut down")
            self._queue.put((future, fn, args))
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle = max(0, self._idle - 1)
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                del future, fn, args, item
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Refuse new work, cancel work not started, let each worker leave when it is done."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)

    def join(self, deadline: float) -> list[threading.Thread]:
        """Wait for the workers until ``deadline`` (time.monotonic); returns those still busy."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in threads if thread.is_alive()]
