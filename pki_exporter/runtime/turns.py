"""Scrapes before refresh work, in one interpreter.

A refresh keeps the interpreter busy: decoding and folding pages holds the GIL. A scrape
releases and retakes the GIL a dozen times (socket, ``/proc`` reads of the process
collector, gzip) and would wait behind every busy refresh thread each time (docs/performance.md, "Scrapes
before refresh work").

So the refresh threads take turns on their CPU-bound work (``cpu()``, one page at a time:
decode, then fold), and none starts a turn while a scrape is being answered
(``scrape()``, from collecting to the last byte sent). A scrape waits at most for the
turn in progress; a refresh thread waits at most ``MAX_YIELD`` seconds per turn, so that
a flood of scrapes cannot stall a refresh.

One ``Turns`` is made per serving process (``app.Exporter``) and handed to whoever takes
turns: the refresher's Graph clients and the HTTP server. Nothing here is global: two
exporters in one process (tests) do not wait for each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """CPU turns of refresh threads, held back while a scrape is being answered."""

    MAX_YIELD = 0.05
    """Seconds a refresh thread gives way to scrapes before it takes its turn anyway."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._scrapes = 0

    @contextmanager
    def cpu(self) -> Iterator[None]:
        """One turn of CPU-bound refresh work: after the turn in progress, and after the
        scrapes being answered (for ``MAX_YIELD`` seconds at most)."""
        with self._cond:
            deadline = time.monotonic() + self.MAX_YIELD
            while self._busy or self._scrapes:
                left = deadline - time.monotonic()
                if self._scrapes and not self._busy and left <= 0:
                    break
                self._cond.wait(left if left > 0 and not self._busy else None)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def begin_scrape(self) -> None:
        """A scrape starts: no new turn begins, and the one in progress is waited for."""
        with self._cond:
            self._scrapes += 1
            while self._busy:
                self._cond.wait()

    def end_scrape(self) -> None:
        with self._cond:
            self._scrapes -= 1
            self._cond.notify_all()

    @contextmanager
    def scrape(self) -> Iterator[None]:
        """``begin_scrape`` ... ``end_scrape``."""
        self.begin_scrape()
        try:
            yield
        finally:
            self.end_scrape()
