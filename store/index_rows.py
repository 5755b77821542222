"""Typed index rows from search-parameter elements: the split the search index stores.

Each search parameter type turns elements (CodeableConcepts, Periods, Quantities,
References, plain strings…) into rows of its index table. The splitters append
straight into the table's value column lists, one call per parameter of a resource,
and record the call as one run (resource position, parameter, number of rows): no
tuple per row, no per-row key values, no transposition before the columns become
Arrow arrays (the runs are expanded there, vectorized). Each splitter records its run
itself and folds ASCII text inline: a function call per parameter or per text is a
tenth of a splitter's time, and a resource has a dozen parameters.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from mapping.ucum import canonical

NEG_INF = datetime(1, 1, 1, tzinfo=UTC)
POS_INF = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")
_NAME_PARTS = ("text", "family", "city", "district", "state", "postalCode", "country")
_NAME_LISTS = ("given", "prefix", "suffix", "line")
# isinstance() with ``dict | list`` written in place builds the union at every call (twice the test's time).
_CONTAINER = dict | list
_NUMBER = int | float

Columns = list[list[Any]]
"""One index table's rows being built: the runs' resource positions, parameters and row counts, then the
value columns (from ``VALUES`` on)."""
VALUES = 3


def norm(text: str) -> str:
    """Case- and accent-folded text: what string search compares."""
    if text.isascii():
        return text.lower()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def repeat_rows(cols: Columns, start: int, end: int, i: int, code: str) -> None:
    """Append the rows ``start:end`` of the value columns again, as a run of parameter ``code``: a
    parameter whose elements are those of another one already split (the splitters' rows depend only
    on the elements and the analyte)."""
    if end > start:
        for col in cols[VALUES:]:
            col.extend(col[start:end])
        cols[0].append(i)
        cols[1].append(code)
        cols[2].append(end - start)


def token_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """(system, code, text) rows: codings of a CodeableConcept, a Coding/Identifier/ContactPoint, a code."""
    run_pos, run_codes, run_rows, systems, codes, texts = cols
    before = len(systems)
    for e in elements:
        if isinstance(e, dict):
            coding = e.get("coding")
            if coding:
                for c in coding:
                    if isinstance(c, dict):
                        display = c.get("display")
                        systems.append(c.get("system"))
                        codes.append(c.get("code"))
                        texts.append(
                            (display.lower() if display.isascii() else norm(display))
                            if isinstance(display, str) else None
                        )
            text = e.get("text")
            if isinstance(text, str):
                systems.append(None)
                codes.append(None)
                texts.append(text.lower() if text.isascii() else norm(text))
            value = e["code"] if "code" in e else e.get("value")
            if value is not None and not isinstance(value, _CONTAINER):
                label = e.get("display")
                if label is None and isinstance(e.get("type"), dict):
                    label = e["type"].get("text")
                systems.append(e.get("system"))
                codes.append(str(value))
                texts.append(norm(label) if isinstance(label, str) else None)
        elif isinstance(e, bool):
            systems.append(None)
            codes.append("true" if e else "false")
            texts.append(None)
        elif e is not None:
            systems.append(None)
            codes.append(e if type(e) is str else str(e))
            texts.append(None)
    if len(systems) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(systems) - before)


def string_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """(normalized, raw) rows: a string, or every text part of a HumanName/Address."""
    run_pos, run_codes, run_rows, values, raws = cols
    before = len(values)
    for e in elements:
        if isinstance(e, str):
            parts: list[Any] = [e]
        elif isinstance(e, dict):
            parts = [e.get(k) for k in _NAME_PARTS]
            for k in _NAME_LISTS:
                parts += e.get(k) or ()
        else:
            continue
        for p in parts:
            if isinstance(p, str) and p:
                values.append(norm(p))
                raws.append(p)
    if len(values) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(values) - before)


@lru_cache(maxsize=65536)
def _target(ref: str) -> tuple[str | None, str | None]:
    """(type, id) of the local resource a relative reference names; none for an absolute URL, which
    names a resource of the server at that URL (the store cannot know its own base when it writes,
    so, as for the Patient compartment, only relative references are local; an absolute URL matches
    searches for that URL). The same few references (a patient, an encounter) recur across a
    patient's resources, so the regular expression runs once for each."""
    if "://" in ref or ref.startswith("urn:"):
        return None, None
    m = _REF.search(ref)
    return (m.group(1), m.group(2)) if m else (None, None)


def reference_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """(type, id, url, identifier system, identifier value) of References or canonical/uri values."""
    run_pos, run_codes, run_rows, ref_types, ref_ids, urls, isystems, ivalues = cols
    before = len(ref_types)
    for e in elements:
        if isinstance(e, dict):
            ref = e.get("reference")
            ident = e.get("identifier")
            isys, ival = (ident.get("system"), ident.get("value")) if isinstance(ident, dict) else (None, None)
        elif isinstance(e, str):
            ref, isys, ival = e, None, None
        else:
            continue
        if isinstance(ref, str):
            ref_type, ref_id = _target(ref)
        elif ival is None:
            continue
        else:
            ref_type = ref_id = None
        ref_types.append(ref_type)
        ref_ids.append(ref_id)
        urls.append(ref)
        isystems.append(isys)
        ivalues.append(ival)
    if len(ref_types) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(ref_types) - before)


@lru_cache(maxsize=65536)
def date_range(text: str) -> tuple[datetime, datetime] | None:
    """[lo, hi) of a FHIR date/dateTime/instant by its precision (no zone: UTC)."""
    try:
        n = len(text)
        if n == 4:
            lo = datetime(int(text), 1, 1, tzinfo=UTC)
            return lo, lo.replace(year=lo.year + 1)
        if n == 7:
            y, m = int(text[:4]), int(text[5:7])
            lo = datetime(y, m, 1, tzinfo=UTC)
            return lo, datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        if n == 10:
            lo = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return lo, lo + timedelta(days=1)
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    step = timedelta(seconds=1) if dt.microsecond == 0 else timedelta(microseconds=1)
    return dt, dt + step


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch: Arrow builds a timestamp column from ints ~60× faster than
    from ``datetime`` objects."""
    return (moment - _EPOCH) // _MICROSECOND


_NEG_INF_US, _POS_INF_US = _micros(NEG_INF), _micros(POS_INF)


@lru_cache(maxsize=65536)
def _range_us(text: str) -> tuple[int, int] | None:
    """:func:`date_range` in epoch microseconds."""
    r = date_range(text)
    return (_micros(r[0]), _micros(r[1])) if r else None


def date_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """[lo, hi) rows (epoch microseconds) of dates/dateTimes/instants, Periods or Timings."""
    run_pos, run_codes, run_rows, los, his = cols
    before = len(los)
    for e in elements:
        if isinstance(e, str):
            r = _range_us(e)
            if r:
                los.append(r[0])
                his.append(r[1])
            continue
        if isinstance(e, dict):
            start, end = e.get("start"), e.get("end")
            if isinstance(start, str) or isinstance(end, str):
                lo = _range_us(start) if isinstance(start, str) else None
                hi = _range_us(end) if isinstance(end, str) else None
                los.append(lo[0] if lo else _NEG_INF_US)
                his.append(hi[1] if hi else _POS_INF_US)
                continue
            ranges = (_range_us(ev) for ev in e.get("event") or () if isinstance(ev, str))
        else:
            continue
        for r in ranges:
            if r:
                los.append(r[0])
                his.append(r[1])
    if len(los) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(los) - before)


def number_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """The numbers of numeric elements."""
    run_pos, run_codes, run_rows, values = cols
    before = len(values)
    values += [float(e) for e in elements if isinstance(e, _NUMBER) and not isinstance(e, bool)]
    if len(values) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(values) - before)


@lru_cache(maxsize=4096)
def _affine(code: str, analyte: str | None) -> tuple[float, float, str] | None:
    """UCUM conversions are affine (Celsius has an offset): slope, offset, canonical unit."""
    try:
        one, zero = canonical(1.0, code, analyte=analyte), canonical(0.0, code, analyte=analyte)
    except ValueError:
        return None
    if one is None or zero is None:
        return None
    return one[0] - zero[0], zero[0], one[1]


def quantity_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """(value, system, code, unit, canonical value, canonical unit, analyte) of Quantities."""
    run_pos, run_codes, run_rows, values, systems, codes, units, canon_values, canon_units, analytes = cols
    before = len(values)
    for e in elements:
        if not isinstance(e, dict):
            continue
        value = e.get("value")
        if not isinstance(value, _NUMBER) or isinstance(value, bool):
            continue
        unit_code = e.get("code") or e.get("unit")
        conv = _affine(unit_code, analyte) if isinstance(unit_code, str) else None
        values.append(float(value))
        systems.append(e.get("system"))
        codes.append(unit_code)
        units.append(e.get("unit"))
        canon_values.append(value * conv[0] + conv[1] if conv else None)
        canon_units.append(conv[2] if conv else None)
        analytes.append(analyte)
    if len(values) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(values) - before)


def uri_into(cols: Columns, elements: list[Any], i: int, code: str, analyte: str | None) -> None:
    """uri/url/canonical values."""
    run_pos, run_codes, run_rows, values = cols
    before = len(values)
    values += [e for e in elements if isinstance(e, str)]
    if len(values) > before:
        run_pos.append(i)
        run_codes.append(code)
        run_rows.append(len(values) - before)
