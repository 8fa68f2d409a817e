"""CPU turns (runtime/turns.py): refresh work one page-turn at a time, held back while a
scrape is answered; and that the Graph client and the HTTP server use the Turns they are
given (no module-level instance)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pki_exporter.graph.client import GraphClient
from pki_exporter.graph.records import LeafRecord
from pki_exporter.runtime.turns import Turns
from pki_exporter.web.server import Endpoints, ExporterServer, serve
from pki_exporter.web.toolkit import WebConfigProvider

WAIT = 10.0
"""Seconds to wait for something that must happen (a failure, not a measurement)."""
NOT_YET = 0.2
"""Seconds to watch for something that must not happen yet."""
CA = "11111111-1111-4111-8111-111111111111"


class Holder:
    """A thread inside ``turns.cpu()`` (or a scrape) until released."""

    def __init__(self, enter: object) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._enter = enter
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self._enter():  # type: ignore[operator]
            self.entered.set()
            self.release.wait(WAIT)

    def done(self) -> None:
        self.release.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def test_cpu_turns_are_one_at_a_time() -> None:
    turns = Turns()
    first = Holder(turns.cpu)
    assert first.entered.wait(WAIT)
    second = Holder(turns.cpu)
    assert not second.entered.wait(NOT_YET)
    first.done()
    assert second.entered.wait(WAIT)
    second.done()


def test_a_scrape_waits_for_the_turn_in_progress_only() -> None:
    turns = Turns()
    turns.MAX_YIELD = 3600.0  # a waiting turn would wait for the scrape "for ever"
    refresh = Holder(turns.cpu)
    assert refresh.entered.wait(WAIT)
    scrape = Holder(turns.scrape)
    assert not scrape.entered.wait(NOT_YET)
    waiting = Holder(turns.cpu)  # a refresh thread asking for its next turn meanwhile
    refresh.done()
    assert scrape.entered.wait(WAIT)  # the scrape goes first
    assert not waiting.entered.wait(NOT_YET)
    scrape.done()
    assert waiting.entered.wait(WAIT)
    waiting.done()


def test_a_flood_of_scrapes_delays_a_turn_by_max_yield_at_most() -> None:
    turns = Turns()
    turns.MAX_YIELD = 0.05
    scrape = Holder(turns.scrape)  # never ends until the turn has been taken
    assert scrape.entered.wait(WAIT)
    refresh = Holder(turns.cpu)
    assert refresh.entered.wait(WAIT)
    refresh.done()
    scrape.done()


def test_a_scrape_that_fails_ends_its_turn() -> None:
    turns = Turns()
    turns.MAX_YIELD = 3600.0
    with pytest.raises(RuntimeError), turns.scrape():
        raise RuntimeError("rendering failed")
    refresh = Holder(turns.cpu)
    assert refresh.entered.wait(WAIT)
    refresh.done()


def test_two_turns_do_not_wait_for_each_other() -> None:
    """No module-level state: another exporter's scrape holds back nothing here."""
    mine, other = Turns(), Turns()
    mine.MAX_YIELD = other.MAX_YIELD = 3600.0
    scrape = Holder(other.scrape)
    busy = Holder(other.cpu)
    assert scrape.entered.wait(WAIT)
    refresh = Holder(mine.cpu)
    assert refresh.entered.wait(WAIT)
    refresh.done()
    scrape.done()
    assert busy.entered.wait(WAIT)
    busy.done()


class Recording(Turns):
    """Turns that write down who took what, and how many scrapes were on meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    @contextmanager
    def cpu(self) -> Iterator[None]:
        with super().cpu():
            self.events.append("cpu")
            yield

    def begin_scrape(self) -> None:
        super().begin_scrape()
        self.events.append("begin")

    def end_scrape(self) -> None:
        self.events.append("end")
        super().end_scrape()


class _Tokens:
    def token(self) -> str:
        return "token"

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Sink:
    """Not a Fold: anything with add(records) and add_invalid(n) takes the pages."""

    def __init__(self) -> None:
        self.records: list[LeafRecord] = []
        self.invalid = 0

    def add(self, records: list[LeafRecord]) -> None:
        self.records.extend(records)

    def add_invalid(self, count: int, misfits: object = ()) -> None:
        self.invalid += count


def test_the_graph_client_decodes_and_folds_in_the_turns_it_is_given() -> None:
    record = {
        "validityStartDateTime": "2026-01-01T00:00:00Z",
        "validityEndDateTime": "2027-01-01T00:00:00Z",
        "certificateStatus": "active",
        "devicePlatform": "windows",
    }
    second_page = "https://graph.test/beta/next?page=2"
    pages = {
        "page1": {"value": [record, record, {"validityStartDateTime": 7}]},
        "page2": {"value": [record]},
    }
    pages["page1"]["@odata.nextLink"] = second_page
    turns = Recording()

    def handler(request: httpx.Request) -> httpx.Response:
        page = "page2" if request.url.params.get("page") == "2" else "page1"
        assert turns.events.count("cpu") == (2 if page == "page2" else 0)
        return httpx.Response(200, content=json.dumps(pages[page]).encode())

    client = GraphClient(
        "https://graph.test",
        _Tokens(),
        timeout=5.0,
        transport=httpx.MockTransport(handler),
        turns=turns,
    )
    sink = _Sink()
    try:
        assert client.fold_leaves(CA, sink, deadline=float("inf")) == 2
    finally:
        client.close()
    assert turns.events == ["cpu"] * 4  # decode, then fold: two turns a page
    assert len(sink.records) == 3
    assert sink.invalid == 1


def test_the_server_holds_refresh_turns_from_collect_to_answer() -> None:
    turns = Recording()

    class Seen(Collector):
        def collect(self) -> Iterator[Metric]:
            turns.events.append(f"collect with {turns._scrapes} scrape(s) on")
            family = GaugeMetricFamily("seen", "A family.")
            family.add_metric([], 1.0)
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Seen())

    def before() -> None:
        turns.events.append(f"before with {turns._scrapes} scrape(s) on")

    endpoints = Endpoints(
        registry=registry,
        ready=lambda: True,
        status_page=lambda: "",
        turns=turns,
        before_scrape=before,
    )
    server = ExporterServer(("127.0.0.1", 0), endpoints, WebConfigProvider(None))
    serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with httpx.Client() as http:
            answer = http.get(url + "/metrics")
            assert answer.status_code == 200
            assert answer.text.endswith("seen 1.0\n")
            assert http.get(url + "/ready").status_code == 200  # no turn for other paths
    finally:
        server.shutdown()
        server.server_close()
    assert turns.events == [
        "before with 0 scrape(s) on",  # a refresh on scrape must not wait for the scrape
        "begin",
        "collect with 1 scrape(s) on",
        "end",
    ]
