"""Searchset and history Bundles with absolute paging links, built around already-serialized resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.versioning import etag
from store.store import fhir_instant

Entry = tuple[str, str, bytes]


def paging_links(url: str, params: list[tuple[str, str]], total: int, count: int, offset: int) -> list[dict[str, str]]:
    """self, first, previous, next and last links of one page (``url`` has no query); the search's
    own parameters are encoded once for all of them."""
    prefix = f"{url}?{urlencode(params)}&" if params else f"{url}?"

    def page(at: int) -> str:
        return f"{prefix}_count={count}&_offset={at}"

    links = [{"relation": "self", "url": page(offset)}]
    if count <= 0:
        return links
    links.append({"relation": "first", "url": page(0)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    if offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    links.append({"relation": "last", "url": page(max(0, (total - 1) // count * count))})
    return links


def _splice(head: dict[str, Any], parts: list[bytes]) -> bytes:
    raw = orjson.dumps(head)
    if not parts:
        return raw
    return raw[:-1] + b',"entry":[' + b",".join(parts) + b"]}"


def searchset(
    *,
    base: str,
    url: str,
    params: list[tuple[str, str]],
    total: int | None,
    count: int,
    offset: int,
    entries: list[Entry],
    included: list[Entry] | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> bytes:
    """Serialize a searchset Bundle; ``entries`` are (type, id, resource JSON) spliced in without re-parsing."""
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        head["total"] = total
    head["link"] = paging_links(url, params, total if total is not None else offset + count + 1, count, offset)

    def entry(t: str, i: str, raw: bytes, mode: str) -> bytes:
        return (b'{"fullUrl":' + orjson.dumps(f"{base}/{t}/{i}") + b',"resource":' + raw
                + b',"search":{"mode":"' + mode.encode() + b'"}}')

    parts = [entry(t, i, raw, "match") for t, i, raw in entries]
    parts += [entry(t, i, raw, "include") for t, i, raw in included or []]
    parts += [orjson.dumps(item) for item in extra or []]
    return _splice(head, parts)


def history_bundle(
    *,
    base: str,
    url: str,
    params: list[tuple[str, str]],
    total: int,
    count: int,
    offset: int,
    rows: list[tuple[str, str, int, datetime, bool, dict[str, Any] | None, str | None]],
) -> bytes:
    """A history Bundle: each version with the request that made it and its response. Versions no REST
    interaction wrote (imports, messages, twins) show a create as POST and later versions as PUT."""
    parts = []
    for rtype, rid, version, ts, deleted, resource, sent_by in rows:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{rtype}/{rid}"}
        if resource is not None and not deleted:
            entry["resource"] = resource
        method = "DELETE" if deleted else (sent_by or ("POST" if version == 1 else "PUT"))
        entry["request"] = {"method": method, "url": rtype if method == "POST" else f"{rtype}/{rid}"}
        entry["response"] = {
            "status": "201" if version == 1 and not deleted else "200",  # a REST delete answers 200
            "etag": etag(version),
            "lastModified": fhir_instant(ts),
        }
        parts.append(orjson.dumps(entry))
    head = {"resourceType": "Bundle", "type": "history", "total": total,
            "link": paging_links(url, params, total, count, offset)}
    return _splice(head, parts)
