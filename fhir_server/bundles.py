"""Searchset Bundles with absolute paging links, built around already-serialized resources."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson


def page_link(base: str, rtype: str, params: list[tuple[str, str]], count: int, offset: int) -> str:
    """Absolute URL of one page of a search."""
    query = [*params, ("_count", str(count)), ("_offset", str(offset))]
    return f"{base}/{rtype}?{urlencode(query)}"


def searchset(
    *,
    base: str,
    rtype: str,
    params: list[tuple[str, str]],
    total: int,
    count: int,
    offset: int,
    entries: list[tuple[str, str, bytes]],
    extra: list[dict[str, Any]] | None = None,
) -> bytes:
    """Serialize a searchset Bundle; ``entries`` are (type, id, resource JSON) spliced in without re-parsing."""
    links = [{"relation": "self", "url": page_link(base, rtype, params, count, offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": page_link(base, rtype, params, count, offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page_link(base, rtype, params, count, max(0, offset - count))})
    head = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links})
    parts = [
        b'{"fullUrl":' + orjson.dumps(f"{base}/{t}/{i}") + b',"resource":' + raw + b',"search":{"mode":"match"}}'
        for t, i, raw in entries
    ]
    parts += [orjson.dumps(item) for item in extra or []]
    if not parts:
        return head
    return head[:-1] + b',"entry":[' + b",".join(parts) + b"]}"
