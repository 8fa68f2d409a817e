"""The fake Graph: paging, encodings, the CA resource, the navigation property."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pki_simulator import CASpec, DatasetSpec, Simulator, TenantSpec

from .helpers import ACTION, ANCHOR, PREFIX, GraphClient, fetch_token, tls

TENANT = "6f1f6b2a-7d3e-4c1a-9a55-0c0ffee00001"
CLIENT = "6f1f6b2a-7d3e-4c1a-9a55-0c0ffee00002"
CA_A = "0a0a0a0a-0000-4000-8000-00000000000a"
CA_B = "0b0b0b0b-0000-4000-8000-00000000000b"


def test_every_page_is_reached(sim: Simulator, graph: GraphClient) -> None:
    cas = graph.list_cas()
    assert [c["id"] for c in cas] == [c.id for c in sim.tenants[0].cas]
    for ca in sim.tenants[0].cas:
        pages = graph.leaf_pages(ca.id)
        assert [len(p.body["value"]) for p in pages] == [50, 50, 20]
        for page in pages[:-1]:
            link = page.body["@odata.nextLink"]
            assert link.startswith(f"{sim.url}{PREFIX}/{ca.id}/{ACTION}?$skiptoken=")
            assert set(page.body) == {"@odata.context", "value", "@odata.nextLink"}
        assert "@odata.nextLink" not in pages[-1].body
        ids = [r["id"] for p in pages for r in p.body["value"] if isinstance(r, dict)]
        assert len(ids) == len(set(ids))
    leaves = [e for e in sim.log if e.endpoint == "leaves"]
    assert [(e.method, e.page) for e in leaves] == [("POST", 0), ("GET", 1), ("GET", 2)] * 3


def test_next_link_answers_get_and_post_with_the_same_bytes(
    sim: Simulator, graph: GraphClient
) -> None:
    ca_id = sim.tenants[0].cas[0].id
    first = graph.http.post(graph.url(f"/{ca_id}/{ACTION}"))
    link = first.json()["@odata.nextLink"]
    token = parse_qs(urlsplit(link).query)["$skiptoken"][0]
    assert token not in ("1", "2") and not token.isdigit()
    by_get, by_post = graph.http.get(link), graph.http.post(link)
    assert by_get.status_code == by_post.status_code == 200
    assert by_get.content == by_post.content
    tampered = graph.http.get(link.replace(token, token[:-2] + "zz"))
    assert tampered.status_code == 400
    assert tampered.json()["error"]["code"] == "BadRequest"


def test_action_needs_post(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    response = graph.http.get(graph.url(f"/{ca_id}/{ACTION}"))
    assert response.status_code == 405


def _irregular_spec(page_sizes: tuple[int, ...]) -> DatasetSpec:
    return DatasetSpec(
        seed=3,
        anchor=ANCHOR,
        tenants=(
            TenantSpec(
                tenant_id=TENANT,
                client_id=CLIENT,
                name="irregular",
                cas=(
                    CASpec(
                        id=CA_A,
                        display_name="Irregular CA",
                        certificates=sum(page_sizes),
                        page_sizes=page_sizes,
                    ),
                    CASpec(id=CA_B, display_name="Empty CA", certificates=0),
                ),
            ),
        ),
        ca_page_size=1,
    )


def test_irregular_pages_with_an_empty_page_in_the_middle(
    make_graph: Callable[..., GraphClient],
) -> None:
    with Simulator(_irregular_spec((3, 0, 5, 0, 1))) as sim:
        graph = make_graph(sim)
        pages = graph.leaf_pages(CA_A)
        assert [len(p.body["value"]) for p in pages] == [3, 0, 5, 0, 1]
        assert [("@odata.nextLink" in p.body) for p in pages] == [True] * 4 + [False]
        empty = graph.leaf_pages(CA_B)
        assert [p.body["value"] for p in empty] == [[]]
        # the CA list pages one CA at a time
        assert [c["id"] for c in graph.list_cas()] == [CA_A, CA_B]
        ca_list = [e for e in sim.log if e.endpoint == "ca_list"]
        assert [e.page for e in ca_list] == [0, 1]


def test_page_sizes_must_add_up() -> None:
    with pytest.raises(ValueError, match="page_sizes"):
        CASpec(id=CA_A, display_name="x", certificates=3, page_sizes=(1, 1))


def test_gzip_and_identity_give_the_same_json(
    sim: Simulator, make_graph: Callable[..., GraphClient]
) -> None:
    ca_id = sim.tenants[0].cas[1].id
    zipped = make_graph(sim, gzip=True)
    plain = make_graph(sim, gzip=False)
    url = zipped.url(f"/{ca_id}/{ACTION}")
    with zipped.http.stream("POST", url) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        raw = b"".join(response.iter_raw())
    identity = plain.http.post(url)
    assert "Content-Encoding" not in identity.headers
    assert int(identity.headers["Content-Length"]) == len(identity.content)
    assert int(response.headers["Content-Length"]) == len(raw) < len(identity.content) / 3
    assert gzip.decompress(raw) == identity.content
    assert json.loads(gzip.decompress(raw)) == json.loads(identity.content)
    encodings = [e.content_encoding for e in sim.log if e.endpoint == "leaves"]
    assert encodings == ["gzip", None]


def test_request_and_client_request_ids(sim: Simulator, graph: GraphClient) -> None:
    response = graph.http.get(graph.url(), headers={"client-request-id": "abc-123"})
    assert response.headers["client-request-id"] == "abc-123"
    assert response.headers["request-id"]
    other = graph.http.get(graph.url())
    assert other.headers["request-id"] != response.headers["request-id"]
    assert [e.client_request_id for e in sim.log] == ["abc-123", None]
    assert [e.request_id for e in sim.log] == [
        response.headers["request-id"],
        other.headers["request-id"],
    ]


def test_one_ca_and_an_unknown_ca(sim: Simulator, graph: GraphClient) -> None:
    ca = sim.tenants[0].cas[0]
    one = graph.http.get(graph.url(f"/{ca.id}"))
    assert one.status_code == 200
    body = one.json()
    assert body["id"] == ca.id
    assert body["displayName"] == ca.display_name
    assert body["certificateDownloadUrl"].startswith("data:application/x-x509-ca-cert;base64,")
    for path in (
        "/00000000-0000-4000-8000-000000000000",
        f"/00000000-0000-4000-8000-000000000000/{ACTION}",
    ):
        method = "POST" if path.endswith(ACTION) else "GET"
        missing = graph.http.request(method, graph.url(path), headers={"client-request-id": "x-1"})
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "ResourceNotFound"
        assert json.loads(error["message"])["_version"] == 3
        assert error["innerError"]["client-request-id"] == "x-1"


def test_prefer_header_and_the_expired_ca_status(sim: Simulator, graph: GraphClient) -> None:
    expired = sim.tenants[0].cas[2]
    assert expired.status == "expired"
    without = graph.http.get(graph.url(f"/{expired.id}")).json()
    with_prefer = graph.http.get(
        graph.url(f"/{expired.id}"),
        headers={"Prefer": "odata.maxpagesize=10, include-unknown-enum-members"},
    ).json()
    assert without["certificationAuthorityStatus"] == "unknownFutureValue"
    assert with_prefer["certificationAuthorityStatus"] == "expired"
    listed = {c["id"]: c["certificationAuthorityStatus"] for c in graph.list_cas(prefer=False)}
    assert listed[expired.id] == "unknownFutureValue"
    assert sim.log[-1].prefer is None
    assert sim.log[1].prefer == "odata.maxpagesize=10, include-unknown-enum-members"


def test_navigation_with_select_and_filter(sim: Simulator, graph: GraphClient) -> None:
    ca_id = sim.tenants[0].cas[0].id
    all_records = graph.leaves(ca_id)
    active = [
        r for r in all_records if isinstance(r, dict) and r.get("certificateStatus") == "active"
    ]
    url = graph.url(f"/{ca_id}/cloudCertificationAuthorityLeafCertificate")
    params = {
        "$select": "id,certificateStatus,validityEndDateTime",
        "$filter": "certificateStatus eq 'active'",
        "$count": "true",
    }
    response = graph.http.get(url, params=params)
    got: list[dict[str, object]] = []
    body = response.json()
    assert body["@odata.count"] == len(active)
    while True:
        assert response.status_code == 200, response.text
        got.extend(body["value"])
        if "@odata.nextLink" not in body:
            break
        assert "%24select=" in body["@odata.nextLink"] or "$select=" in body["@odata.nextLink"]
        response = graph.http.get(body["@odata.nextLink"])
        body = response.json()
    assert got == [
        {k: r[k] for k in ("id", "certificateStatus", "validityEndDateTime") if k in r}
        for r in active
    ]
    count = graph.http.get(url + "/$count", params={"$filter": "certificateStatus eq 'active'"})
    assert count.text == str(len(active))
    assert graph.http.get(url + "/$count").text == "120"
    assert graph.http.get(url, params={"$top": "x"}).status_code == 400
    assert graph.http.get(url, params={"$search": "x"}).status_code == 400
    assert graph.http.get(url, params={"$select": "nope"}).status_code == 400
    assert graph.http.get(url, params={"$filter": "startswith(id,'a')"}).status_code == 400


def test_top_level_leaf_collection_is_404(graph: GraphClient) -> None:
    response = graph.http.get(
        f"{graph.sim.url}/beta/deviceManagement/cloudCertificationAuthorityLeafCertificate"
    )
    assert response.status_code == 404


def test_a_token_sees_only_its_own_tenant(make_graph: Callable[..., GraphClient]) -> None:
    with Simulator.generate(tenants=2, cas=1, certificates=5, anchor=ANCHOR) as sim:
        first, second = sim.tenants
        graph = make_graph(sim, first)
        assert [c["id"] for c in graph.list_cas()] == [first.cas[0].id]
        foreign = graph.http.post(graph.url(f"/{second.cas[0].id}/{ACTION}"))
        assert foreign.status_code == 404
        assert sim.log[-1].tenant_id == first.tenant_id


def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    # every request of a client session goes over one TLS connection
    token = fetch_token(sim, sim.tenants[0])
    with httpx.Client(
        verify=tls(sim), trust_env=False, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        peers = set()
        for _ in range(5):
            with client.stream("GET", f"{sim.url}{PREFIX}") as response:
                stream = response.extensions["network_stream"]
                peers.add(stream.get_extra_info("client_addr"))
                response.read()
    assert len(peers) == 1


def test_a_request_carries_when_the_kernel_received_it(sim: Simulator) -> None:
    """``received`` is when the request's last bytes reached the simulator's kernel (the
    log's ``monotonic`` is when its thread read them, later on a loaded machine): a
    request whose end is held back 0.1 s is received at its end, on a connection's first
    request and on a later one."""
    tenant = sim.tenants[0].tenant_id
    head = f"GET /{tenant}/v2.0/.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\n"
    raw = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    with tls(sim).wrap_socket(raw, server_hostname="127.0.0.1") as connection:
        reader = connection.makefile("rb")
        for _ in range(2):
            connection.sendall(head.encode())
            started = time.monotonic()
            time.sleep(0.1)  # the request's end comes 0.1 s after its start
            ended = time.monotonic()
            connection.sendall(b"\r\n")
            status = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            assert status.startswith(b"HTTP/1.1 200"), status
            entry = sim.log[-1]
            assert entry.received is not None
            # The kernel counts in ticks of up to 4 ms.
            assert ended - 0.005 <= entry.received <= entry.monotonic + 0.005
            assert entry.received - started >= 0.095
    assert len(sim.log) == 2


def test_a_connections_first_request_carries_when_it_was_opened(sim: Simulator) -> None:
    """``opened`` is when the client opened the connection (its ClientHello reached the
    kernel), on the connection's first request only: a request sent 0.2 s after the
    handshake has it 0.2 s before its ``received``."""
    tenant = sim.tenants[0].tenant_id
    head = f"GET /{tenant}/v2.0/.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\n\r\n"
    connecting = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    with tls(sim).wrap_socket(raw, server_hostname="127.0.0.1") as connection:
        shaken = time.monotonic()
        time.sleep(0.2)
        reader = connection.makefile("rb")
        for _ in range(2):
            connection.sendall(head.encode())
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
    first, second = sim.log
    assert first.opened is not None and first.received is not None
    # The kernel counts in ticks of up to 4 ms.
    assert connecting - 0.005 <= first.opened <= shaken + 0.005
    assert first.received - first.opened >= 0.195
    assert second.opened is None
