"""Pages of leaf certificates as bytes, rendered once and served many times.

The leaf action is what the exporter's benchmark hammers: each page is generated and
encoded on first use, then kept as the complete response body, raw and gzip, so that
serving it again is a ``sendall`` of ready bytes. Only the rare variants (a fault that
rewrites the ``nextLink``, the navigation property with ``$select``/``$filter``) are built
per request, from the cached records.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pki_simulator.dataset import CAData, Dataset
from pki_simulator.jose import JWTError, b64url_decode, b64url_encode

PREFIX = "/beta/deviceManagement/cloudCertificationAuthority"
ACTION = "getAllCloudCertificationAuthorityLeafCertificates"
NAVIGATION = "cloudCertificationAuthorityLeafCertificate"
LEAF_CONTEXT = (
    "/beta/$metadata#Collection(microsoft.graph.cloudCertificationAuthorityLeafCertificate)"
)
GZIP_LEVEL = 3
_DECODED_PAGES = 8


def gzip_bytes(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """gzip with a fixed header (mtime 0), so equal bodies compress to equal bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def make_skiptoken(view: str, ca_id: str, page: int) -> str:
    """An opaque token naming the next page; clients must not (and cannot) build it."""
    return b64url_encode(f"v1|{view}|{ca_id.lower()}|{page}".encode())


def read_skiptoken(token: str) -> tuple[str, str, int] | None:
    """(view, ca id, page) of a token this simulator issued, else None."""
    try:
        parts = b64url_decode(token).decode("utf-8").split("|")
    except (JWTError, UnicodeDecodeError):
        return None
    if len(parts) != 4 or parts[0] != "v1" or not parts[3].isdigit():
        return None
    return parts[1], parts[2], int(parts[3])


@dataclass(frozen=True)
class NavPosition:
    """Where a navigation-property chain stands: page index, first record (index into
    the filtered, ordered view), page size, and the index to stop at (-1: the end)."""

    ca_id: str
    page: int
    start: int
    size: int
    stop: int


def make_nav_token(position: NavPosition) -> str:
    p = position
    return b64url_encode(f"v1|nav|{p.ca_id.lower()}|{p.page}|{p.start}|{p.size}|{p.stop}".encode())


def read_nav_token(token: str) -> NavPosition | None:
    """The position of a navigation ``$skiptoken`` this simulator issued, else None."""
    try:
        parts = b64url_decode(token).decode("utf-8").split("|")
    except (JWTError, UnicodeDecodeError):
        return None
    if len(parts) != 7 or parts[:2] != ["v1", "nav"]:
        return None
    try:
        page, start, size, stop = (int(p) for p in parts[3:])
    except ValueError:
        return None
    if page < 0 or start < 0 or size < 1 or stop < -1:
        return None
    return NavPosition(parts[2], page, start, size, stop)


@dataclass
class RenderedPage:
    """A complete response body; ``raw[start:end]`` is the comma-joined records."""

    raw: bytes
    start: int
    end: int
    count: int
    gz: bytes | None = None


class LeafPages:
    """The cache of rendered leaf pages of one data set for one base URL."""

    def __init__(self, dataset: Dataset, base_url: str, gzip_level: int = GZIP_LEVEL) -> None:
        self.dataset = dataset
        self.base_url = base_url
        self.gzip_level = gzip_level
        self._pages: dict[tuple[str, str, int], RenderedPage] = {}
        self._lock = threading.Lock()
        #: the last decoded pages (navigation reads slices of them), most recent last
        self._decoded: OrderedDict[tuple[str, str, int], list[Any]] = OrderedDict()
        #: per page and $select: each record's JSON, ready to join into a navigation page
        self._encoded: dict[tuple[str, str, int, tuple[str, ...] | None], list[bytes]] = {}
        self._nav_gzip: dict[tuple[Any, ...], bytes] = {}

    def action_url(self, ca_id: str, base: str | None = None) -> str:
        return f"{base or self.base_url}{PREFIX}/{ca_id}/{ACTION}"

    def _envelope(
        self, ca: CAData, page: int, records: bytes, base: str | None
    ) -> tuple[bytes, int]:
        head = (
            '{"@odata.context":' + json.dumps(self.base_url + LEAF_CONTEXT) + ',"value":['
        ).encode()
        tail = "]"
        if page + 1 < ca.pages:
            token = make_skiptoken("action", ca.spec.id, page + 1)
            link = self.action_url(ca.spec.id, base) + "?$skiptoken=" + token
            tail += ',"@odata.nextLink":' + json.dumps(link)
        return head + records + (tail + "}").encode(), len(head)

    def page(self, ca: CAData, page: int) -> RenderedPage:
        """The rendered page, generated on first use (thread-safe, deterministic)."""
        key = (ca.tenant.spec.tenant_id, ca.spec.id, page)
        found = self._pages.get(key)
        if found is not None:
            return found
        generated = ca.generate_page(page)
        records = generated.text.encode("utf-8")
        raw, start = self._envelope(ca, page, records, None)
        rendered = RenderedPage(raw, start, start + len(records), generated.count)
        with self._lock:
            return self._pages.setdefault(key, rendered)

    def body(
        self, ca: CAData, page: int, *, gzip: bool, next_link_base: str | None = None
    ) -> bytes:
        """The response body of a leaf-action page, from cache unless the link is rewritten."""
        rendered = self.page(ca, page)
        if next_link_base is not None:
            records = rendered.raw[rendered.start : rendered.end]
            raw, _ = self._envelope(ca, page, records, next_link_base)
            return gzip_bytes(raw, self.gzip_level) if gzip else raw
        if not gzip:
            return rendered.raw
        if rendered.gz is None:
            rendered.gz = gzip_bytes(rendered.raw, self.gzip_level)
        return rendered.gz

    def records(self, ca: CAData, page: int) -> list[Any]:
        """The decoded records of a page (for the navigation property): a shared list from
        a small cache, so callers must not modify it or its records."""
        key = (ca.tenant.spec.tenant_id, ca.spec.id, page)
        with self._lock:
            found = self._decoded.get(key)
            if found is not None:
                self._decoded.move_to_end(key)
                return found
        rendered = self.page(ca, page)
        result: list[Any] = json.loads(b"[" + rendered.raw[rendered.start : rendered.end] + b"]")
        with self._lock:
            self._decoded[key] = result
            while len(self._decoded) > _DECODED_PAGES:
                self._decoded.popitem(last=False)
        return result

    def slice(self, ca: CAData, start: int, stop: int) -> list[Any]:
        """Records ``start`` to ``stop`` (exclusive) of the CA's concatenated action pages,
        decoding only the pages that hold them."""
        result: list[Any] = []
        offset = 0
        for page, size in enumerate(ca.page_sizes):
            if offset >= stop:
                break
            if offset + size > start and size:
                records = self.records(ca, page)
                result.extend(records[max(0, start - offset) : stop - offset])
            offset += size
        return result

    def encoded(self, ca: CAData, page: int, select: tuple[str, ...] | None) -> list[bytes]:
        """Each record of an action page as JSON, restricted to ``select`` (all keys when
        None; non-object records as they are), kept for the next reader of the navigation
        property (it serves large CAs; decoding a page costs about 20 us a record)."""
        key = (ca.tenant.spec.tenant_id, ca.spec.id, page, select)
        found = self._encoded.get(key)
        if found is not None:
            return found
        records = self.records(ca, page)
        if select is not None:
            records = [
                {k: r[k] for k in select if k in r} if isinstance(r, dict) else r for r in records
            ]
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        result = [dumps(r).encode("utf-8") for r in records]
        with self._lock:
            return self._encoded.setdefault(key, result)

    def encoded_slice(
        self, ca: CAData, start: int, stop: int, select: tuple[str, ...] | None
    ) -> list[bytes]:
        """`encoded` records ``start`` to ``stop`` (exclusive) of the concatenated pages."""
        result: list[bytes] = []
        offset = 0
        for page, size in enumerate(ca.page_sizes):
            if offset >= stop:
                break
            if offset + size > start and size:
                encoded = self.encoded(ca, page, select)
                result.extend(encoded[max(0, start - offset) : stop - offset])
            offset += size
        return result

    def nav_gzip(self, key: tuple[Any, ...], body: bytes) -> bytes:
        """The gzip form of a navigation page, compressed on first use and kept (keyed by
        everything that makes its bytes, apart from the base URL this cache belongs to)."""
        found = self._nav_gzip.get(key)
        if found is not None:
            return found
        compressed = gzip_bytes(body, self.gzip_level)
        with self._lock:
            return self._nav_gzip.setdefault(key, compressed)

    def warm_navigation(self, cas: Iterable[CAData], select: tuple[str, ...] | None) -> int:
        """Encode every record for the navigation property with this ``$select`` now;
        returns the bytes held for it."""
        held = 0
        for ca in cas:
            for page in range(ca.pages):
                held += sum(len(r) for r in self.encoded(ca, page, select))
        return held

    def warm(self, cas: Iterable[CAData], *, gzip: bool = True, workers: int = 1) -> int:
        """Render (and compress) every page now, so that the first reader is not slowed.

        Generation holds the GIL; compression does not, so it runs in worker threads while
        the next page is generated. Returns the number of bytes held (raw + gzip).
        """
        held = 0
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = []
            for ca in cas:
                for page in range(ca.pages):
                    rendered = self.page(ca, page)
                    if gzip and rendered.gz is None:
                        futures.append(pool.submit(self._compress, rendered))
                    held += len(rendered.raw)
            for future in futures:
                held += future.result()
        return held

    def _compress(self, rendered: RenderedPage) -> int:
        if rendered.gz is None:
            rendered.gz = gzip_bytes(rendered.raw, self.gzip_level)
        return len(rendered.gz)


def navigation_url(
    base: str,
    ca_id: str,
    select: str | None,
    filter_: str | None,
    orderby: str | None = None,
) -> str:
    url = f"{base}{PREFIX}/{ca_id}/{NAVIGATION}"
    params = []
    if select is not None:
        params.append("$select=" + quote(select, safe=",'"))
    if filter_ is not None:
        params.append("$filter=" + quote(filter_, safe="'"))
    if orderby is not None:
        params.append("$orderby=" + quote(orderby, safe=","))
    return url + ("?" + "&".join(params) if params else "")
