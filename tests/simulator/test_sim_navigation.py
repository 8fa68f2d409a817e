"""The navigation property .../{id}/cloudCertificationAuthorityLeafCertificate: the same
records as the action, with $select, $filter, $top/$skip, /$count, $orderby, maxpagesize."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pki_simulator import QUIRK_NAMES, Simulator

from .helpers import ANCHOR, PREFIX, GraphClient, parse_date

NAV = "cloudCertificationAuthorityLeafCertificate"
#: the fields the exporter's metrics and drill-down read (spec: "Leaf source")
EXPORTER_SELECT = (
    "id,certificateStatus,validityEndDateTime,deviceId,deviceName,userPrincipalName,"
    "devicePlatform,serialNumber,thumbprint"
)


@pytest.fixture(scope="module")
def quirky() -> Iterator[Simulator]:
    """3 CAs x 180 certificates in action pages of 40 (4 x 40 + 20), every quirk dealt."""
    sim = Simulator.generate(
        seed=7, cas=3, certificates=180, page_size=40, quirk_share=0.2, anchor=ANCHOR
    )
    sim.start()
    yield sim
    sim.close()


@pytest.fixture
def sim(quirky: Simulator) -> Iterator[Simulator]:
    quirky.faults.clear()
    quirky.clear_log()
    yield quirky


@pytest.fixture
def graph(sim: Simulator) -> Iterator[GraphClient]:
    client = GraphClient(sim, sim.tenants[0])
    sim.clear_log()
    yield client
    client.close()


def nav_url(graph: GraphClient, ca_id: str, tail: str = "") -> str:
    return graph.url(f"/{ca_id}/{NAV}{tail}")


def nav_pages(
    graph: GraphClient,
    ca_id: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> list[httpx.Response]:
    """Every page, following nextLinks with GET and the same headers."""
    responses = [graph.http.get(nav_url(graph, ca_id), params=params, headers=headers)]
    while True:
        last = responses[-1]
        assert last.status_code == 200, last.text
        link = json.loads(last.content).get("@odata.nextLink")
        if link is None:
            return responses
        responses.append(graph.http.get(link, headers=headers))


def values(responses: list[httpx.Response]) -> list[Any]:
    return [r for response in responses for r in json.loads(response.content)["value"]]


def restrict(record: Any, fields: str) -> Any:
    if not isinstance(record, dict):
        return record
    return {k: record[k] for k in fields.split(",") if k in record}


def test_every_quirk_is_in_the_data_set(sim: Simulator) -> None:
    assigned = {q for ca in sim.dataset.all_cas() for q in ca.quirks.values()}
    assert assigned == set(QUIRK_NAMES)


def test_navigation_pages_concatenated_equal_action_pages(
    sim: Simulator, graph: GraphClient
) -> None:
    for ca in sim.tenants[0].cas:
        action = graph.leaves(ca.id)
        assert len(action) == 180
        plain = nav_pages(graph, ca.id)
        assert [len(json.loads(r.content)["value"]) for r in plain] == [40, 40, 40, 40, 20]
        assert values(plain) == action
        small = nav_pages(graph, ca.id, headers={"Prefer": "odata.maxpagesize=7"})
        assert len(small) == 26
        assert values(small) == action
        selected = nav_pages(
            graph,
            ca.id,
            params={"$select": EXPORTER_SELECT},
            headers={"Prefer": "include-unknown-enum-members, odata.maxpagesize=999"},
        )
        assert len(selected) == 1
        assert values(selected) == [restrict(r, EXPORTER_SELECT) for r in action]
    navs = [e for e in sim.log if e.endpoint == "leaves_nav"]
    assert [e.page for e in navs[:5]] == [0, 1, 2, 3, 4]
    assert all(e.method == "GET" and e.status == 200 for e in navs)


def test_maxpagesize_preference_applied_and_next_links(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    headers = {"Prefer": "include-unknown-enum-members, odata.maxpagesize=50"}
    pages = nav_pages(graph, ca_id, headers=headers)
    assert [len(json.loads(p.content)["value"]) for p in pages] == [50, 50, 50, 30]
    assert [p.headers.get("Preference-Applied") for p in pages] == ["odata.maxpagesize=50"] * 4
    links = [json.loads(p.content).get("@odata.nextLink") for p in pages]
    assert links[-1] is None
    for link in links[:-1]:
        assert link.startswith(f"{sim.url}{PREFIX}/{ca_id}/{NAV}?$skiptoken=")
        token = parse_qs(urlsplit(link).query)["$skiptoken"][0]
        assert not token.isdigit()
    # a nextLink keeps its page size without the Prefer header (and applies no preference)
    follow = graph.http.get(links[0])
    assert len(follow.json()["value"]) == 50
    assert "Preference-Applied" not in follow.headers
    assert follow.json()["value"] == json.loads(pages[1].content)["value"]
    # capped at 999
    big = graph.http.get(nav_url(graph, ca_id), headers={"Prefer": "odata.maxpagesize=5000"})
    assert big.headers["Preference-Applied"] == "odata.maxpagesize=999"
    assert len(big.json()["value"]) == 180 and "@odata.nextLink" not in big.json()
    # no (or a meaningless) preference: the CA's own page size, nothing applied
    for prefer in (None, "odata.maxpagesize=abc", "odata.maxpagesize=0", "odata.maxpagesize=-3"):
        response = graph.http.get(
            nav_url(graph, ca_id), headers={"Prefer": prefer} if prefer else {}
        )
        assert len(response.json()["value"]) == 40
        assert "Preference-Applied" not in response.headers
    # a tampered or foreign token is refused
    tampered = graph.http.get(links[0][:-3] + "xyz")
    assert tampered.status_code == 400
    other = sim.tenants[0].cas[1].id
    foreign = graph.http.get(links[0].replace(ca_id, other))
    assert foreign.status_code == 400
    assert foreign.json()["error"]["message"] == "The $skiptoken is invalid."


def test_include_unknown_enum_members_beside_maxpagesize(
    sim: Simulator, graph: GraphClient
) -> None:
    expired = sim.tenants[0].cas[2]
    assert expired.status == "expired"
    for prefer in (
        "include-unknown-enum-members, odata.maxpagesize=999",
        "odata.maxpagesize=999,include-unknown-enum-members",
    ):
        listed = graph.http.get(graph.url(), headers={"Prefer": prefer}).json()["value"]
        status = {c["id"]: c["certificationAuthorityStatus"] for c in listed}
        assert status[expired.id] == "expired"
        nav = graph.http.get(nav_url(graph, expired.id), headers={"Prefer": prefer})
        assert nav.headers["Preference-Applied"] == "odata.maxpagesize=999"


def test_top_and_skip(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[1].id
    action = graph.leaves(ca_id)
    top = nav_pages(graph, ca_id, params={"$top": "10"})
    assert len(top) == 1 and values(top) == action[:10]
    skip = nav_pages(graph, ca_id, params={"$skip": "170"})
    assert len(skip) == 1 and values(skip) == action[170:]
    window = nav_pages(
        graph,
        ca_id,
        params={"$skip": "35", "$top": "10"},
        headers={"Prefer": "odata.maxpagesize=4"},
    )
    assert [len(json.loads(p.content)["value"]) for p in window] == [4, 4, 2]
    assert values(window) == action[35:45]
    long = nav_pages(graph, ca_id, params={"$skip": "100", "$top": "1000"})
    assert values(long) == action[100:]
    assert values(nav_pages(graph, ca_id, params={"$top": "0"})) == []
    assert values(nav_pages(graph, ca_id, params={"$skip": "500"})) == []
    counted = graph.http.get(nav_url(graph, ca_id), params={"$top": "5", "$count": "true"})
    assert counted.json()["@odata.count"] == 180
    assert len(counted.json()["value"]) == 5
    for bad in ({"$top": "-1"}, {"$skip": "x"}, {"$top": ""}, {"$top": "²"}, {"$skip": " 1"}):
        response = graph.http.get(nav_url(graph, ca_id), params=bad)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "BadRequest"


def test_filter_and_count(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    action = graph.leaves(ca_id)
    revoked = [r for r in action if isinstance(r, dict) and r.get("certificateStatus") == "revoked"]
    assert revoked
    params = {"$filter": "certificateStatus eq 'revoked'"}
    pages = nav_pages(graph, ca_id, params=params, headers={"Prefer": "odata.maxpagesize=6"})
    assert values(pages) == revoked
    assert all(
        "$filter=" in json.loads(p.content).get("@odata.nextLink", "$filter=") for p in pages
    )
    count = graph.http.get(nav_url(graph, ca_id, "/$count"), params=params)
    assert (count.status_code, count.text) == (200, str(len(revoked)))
    assert count.headers["Content-Type"] == "text/plain"
    plain = graph.http.get(nav_url(graph, ca_id, "/$count"))
    assert plain.text == "180"
    assert [e.endpoint for e in sim.log[-2:]] == ["leaves_count", "leaves_count"]
    nothing = graph.http.get(
        nav_url(graph, ca_id, "/$count"), params={"$filter": "certificateStatus eq 'nope'"}
    )
    assert nothing.text == "0"
    end_filter = graph.http.get(
        nav_url(graph, ca_id), params={"$filter": "validityEndDateTime eq '2025-01-01'"}
    )
    assert end_filter.status_code == 400
    assert graph.http.get(nav_url(graph, ca_id, "/$count"), params={"$top": "1"}).status_code == 400
    unknown = graph.http.get(nav_url(graph, ca_id), params={"$filter": "nope eq 'x'"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == (
        "Could not find a property named 'nope' on type "
        "'microsoft.graph.cloudCertificationAuthorityLeafCertificate'."
    )


def test_select(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    action = graph.leaves(ca_id)
    response = graph.http.get(nav_url(graph, ca_id), params={"$select": "id,deviceId"})
    body = response.json()
    assert body["@odata.context"].endswith(
        "#Collection(microsoft.graph.cloudCertificationAuthorityLeafCertificate(id,deviceId))"
    )
    assert body["value"] == [restrict(r, "id,deviceId") for r in action[:40]]
    assert any(isinstance(r, dict) and "deviceId" not in r for r in action)  # a quirk
    assert "$select=id,deviceId" in body["@odata.nextLink"]
    bad = graph.http.get(nav_url(graph, ca_id), params={"$select": "id,nope"})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "BadRequest"
    assert error["message"] == (
        "Could not find a property named 'nope' on type "
        "'microsoft.graph.cloudCertificationAuthorityLeafCertificate'."
    )
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}


def test_orderby_on_a_clean_data_set() -> None:
    with Simulator.generate(
        seed=4, cas=1, certificates=60, page_size=25, quirk_share=0, anchor=ANCHOR
    ) as sim:
        graph = GraphClient(sim, sim.tenants[0])
        try:
            ca_id = sim.tenants[0].cas[0].id
            action = graph.leaves(ca_id)
            ends = [parse_date(r["validityEndDateTime"]) for r in action]
            assert None not in ends and len(set(ends)) > 50

            def by_end(record: dict[str, Any]) -> float:
                end = parse_date(record["validityEndDateTime"])
                assert end is not None
                return end

            ascending = sorted(action, key=by_end)
            for order, expected in (
                ("validityEndDateTime", ascending),
                ("validityEndDateTime asc", ascending),
                ("validityEndDateTime desc", sorted(action, key=by_end, reverse=True)),
            ):
                pages = nav_pages(
                    graph,
                    ca_id,
                    params={"$orderby": order},
                    headers={"Prefer": "odata.maxpagesize=11"},
                )
                assert len(pages) == 6
                assert values(pages) == expected
            selected = nav_pages(
                graph,
                ca_id,
                params={"$orderby": "validityEndDateTime", "$select": "id", "$top": "3"},
            )
            assert values(selected) == [{"id": r["id"]} for r in ascending[:3]]
            for bad in ("nope", "validityEndDateTime sideways", ""):
                response = graph.http.get(nav_url(graph, ca_id), params={"$orderby": bad})
                assert response.status_code == 400
        finally:
            graph.close()


def test_orderby_with_quirks_is_a_permutation_nulls_first(
    sim: Simulator, graph: GraphClient
) -> None:
    ca_id = sim.tenants[0].cas[0].id
    action = graph.leaves(ca_id)
    ordered = values(nav_pages(graph, ca_id, params={"$orderby": "validityEndDateTime"}))
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, ordered)) == sorted(map(key, action))
    nulls = sum(
        1 for r in action if not isinstance(r, dict) or r.get("validityEndDateTime") is None
    )
    assert nulls > 0
    assert all(
        not isinstance(r, dict) or r.get("validityEndDateTime") is None for r in ordered[:nulls]
    )


def test_warm_navigation_serves_the_same_bytes(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[1].id
    params = {"$select": "id,deviceId"}
    headers = {"Prefer": "odata.maxpagesize=30", "Accept-Encoding": "identity"}
    before = [p.content for p in nav_pages(graph, ca_id, params=params, headers=headers)]
    held = sim.warm_navigation("id,deviceId")
    assert held > 0
    after = [p.content for p in nav_pages(graph, ca_id, params=params, headers=headers)]
    assert before == after and len(after) == 6
    for _ in range(2):  # compressed once, then served from the cache: the same JSON
        zipped = nav_pages(graph, ca_id, params=params, headers={"Prefer": "odata.maxpagesize=30"})
        assert all(p.headers["Content-Encoding"] == "gzip" for p in zipped)
        assert [p.content for p in zipped] == after
    counted = {**params, "$count": "true"}
    for encoding in ("gzip", "identity"):
        first = graph.http.get(
            nav_url(graph, ca_id), params=counted, headers={"Accept-Encoding": encoding}
        )
        assert first.json()["@odata.count"] == 180
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        sim.warm_navigation("id,nope")


def test_post_is_405(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    first = graph.http.get(nav_url(graph, ca_id))
    for url in (
        nav_url(graph, ca_id),
        first.json()["@odata.nextLink"],
        nav_url(graph, ca_id, "/$count"),
    ):
        response = graph.http.post(url)
        assert response.status_code == 405
        error = response.json()["error"]
        assert error["code"] == "BadRequest"
        assert error["message"] == "The HTTP method 'POST' is not supported for this resource."
        assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert [e.endpoint for e in sim.log[-3:]] == ["leaves_nav", "leaves_nav", "leaves_count"]
