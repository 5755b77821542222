"""Readers for FHIR files: JSON resources, Bundles, Bulk NDJSON (plain or gzip).

Each reader streams: NDJSON is read line by line so files far larger than memory
import with bounded memory, and every record remembers its file and line so a
refusal can point at it.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ingest.bundles import ConditionalResolver, unpack_bundle
from ingest.fhir_xml import FhirXmlError, xml_to_resource
from ingest.records import Problem, Record

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")
XML_SUFFIXES = (".xml", ".xml.gz")
HL7_SUFFIXES = (".hl7", ".hl7v2", ".er7")
TEXT_SUFFIXES = (".txt",)
"""Plain text: HL7 v2 when it starts as a message, a file or a batch does (interface engines often
write ``.txt``); anything else named so (a README) is no format fhirtwin reads."""
_ER7_START = re.compile(rb"(?:MSH|FHS|BHS)[^A-Za-z0-9\s]")  # the segment id, then the field separator
_NAMED_FORMATS = NDJSON_SUFFIXES + JSON_SUFFIXES + XML_SUFFIXES + HL7_SUFFIXES
"""Suffixes that name a format the readers take without looking inside (``.txt`` needs a look)."""


def detect_format(path: Path) -> str | None:
    """``ndjson``, ``json``, ``xml`` or ``hl7`` from the file name, sniffing content when ambiguous."""
    name = path.name.lower()
    if name.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if name.endswith(XML_SUFFIXES):
        return "xml"
    if name.endswith(HL7_SUFFIXES):
        return "hl7"
    if name.endswith(TEXT_SUFFIXES):
        with path.open("rb") as fh:
            head = fh.read(64).removeprefix(b"\xef\xbb\xbf").lstrip()
        return "hl7" if _ER7_START.match(head) else None
    if name.endswith(JSON_SUFFIXES):
        with open_file(path) as fh:
            head = fh.read(4096).lstrip()
        # A Bulk export sometimes names NDJSON "*.json": several top-level objects, one per line.
        first, _, rest = head.partition(b"\n")
        if first.rstrip().endswith(b"}") and rest.lstrip().startswith(b"{"):
            return "ndjson"
        return "json"
    return None


def open_file(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def resources_from_json(
    obj: Any, source: str, line: int | None, raw: bytes | str, fmt: str, resolve: ConditionalResolver | None = None
) -> Record:
    """A record from one parsed JSON value: a resource or a Bundle of resources."""
    rec = Record(source=source, line=line, raw=raw, format=fmt)
    if not isinstance(obj, dict):
        rec.problems.append(Problem("expected a JSON object (a FHIR resource)", None, "structure"))
        return rec
    rtype = obj.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        rec.problems.append(Problem("missing resourceType", "resourceType", "required"))
        return rec
    if rtype == "Bundle":
        resources, problems = unpack_bundle(obj, resolve)
        rec.resources, rec.problems = resources, problems
        return rec
    rec.resources = [obj]
    return rec


def ndjson_lines(lines: Iterable[bytes], first_line: int = 1) -> Iterator[tuple[int, bytes, Any, Problem | None]]:
    """(line number, stripped line, parsed value, problem) per non-blank NDJSON line; the value is
    None and the problem says why when the line is not JSON."""
    for lineno, line in enumerate(lines, start=first_line):
        raw = line.strip()
        if not raw:
            continue
        try:
            yield lineno, raw, orjson.loads(raw), None
        except orjson.JSONDecodeError as exc:
            yield lineno, raw, None, Problem(f"invalid JSON: {exc}", None, "structure")


def read_ndjson(path: Path, resolve: ConditionalResolver | None = None) -> Iterator[Record]:
    """One record per non-blank line of a Bulk Data NDJSON file."""
    source = str(path)
    with open_file(path) as fh:
        for lineno, raw, obj, problem in ndjson_lines(fh):
            if problem is not None:
                yield Record(source=source, line=lineno, raw=raw, format="ndjson", problems=[problem])
            else:
                yield resources_from_json(obj, source, lineno, raw, "ndjson", resolve)


def read_json(path: Path, resolve: ConditionalResolver | None = None) -> Iterator[Record]:
    """A single JSON document: a resource or a Bundle."""
    with open_file(path) as fh:
        raw = fh.read()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        rec = Record(source=str(path), line=None, raw=raw, format="json")
        rec.problems.append(Problem(f"invalid JSON: {exc}", None, "structure"))
        yield rec
        return
    yield resources_from_json(obj, str(path), None, raw, "json", resolve)


def read_xml(path: Path, resolve: ConditionalResolver | None = None) -> Iterator[Record]:
    """A FHIR XML document (a resource or a Bundle), through the hardened XML reader."""
    with open_file(path) as fh:
        raw = fh.read()
    try:
        obj = xml_to_resource(raw)
    except FhirXmlError as exc:
        rec = Record(source=str(path), line=None, raw=raw, format="xml")
        rec.problems.append(Problem(f"invalid FHIR XML: {exc}", None, "structure"))
        yield rec
        return
    yield resources_from_json(obj, str(path), None, raw, "xml", resolve)


def iter_files(paths: list[Path], skipped: list[Path] | None = None) -> Iterator[Path]:
    """Files under the given paths (folders recursively), in a stable order.

    Inside folders, only files in a format the readers know are taken (a folder of exports often
    holds a manifest or a README beside the data); the others go to ``skipped``. Files named on
    their own are always taken, so an unknown one is refused with its reason.
    """
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for p in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if p.name.lower().endswith(_NAMED_FORMATS) or detect_format(p) is not None:  # opens .txt only
                yield p
            elif skipped is not None:
                skipped.append(p)
