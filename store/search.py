"""FHIR search over the store's index tables.

A search becomes one SQL query: each parameter is a semi-join against its
index table (``id IN (SELECT id FROM idx_… WHERE …)``), AND across parameters,
OR within a comma list; chains and ``_has`` nest the same builder for another
resource type. The result is a page of (type, id) keys plus the total and the
keys ``_include``/``_revinclude`` add; bodies come from the store's hot map.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson

from mapping.fhirpath.values import sql_string
from mapping.resource_types import R4_RESOURCE_TYPES
from mapping.ucum import analyte_keys, canonical, molar_mass_g_per_mol
from store import patient_cache, type_columns
from store.compartment import compartment_elements
from store.composite import composite_predicate
from store.index_rows import norm
from store.near import near_sql, parse_near
from store.search_params import SearchParam, params_for
from store.search_values import (
    local_reference,
    parse_date,
    parse_number,
    parse_quantity,
    reference_target,
    split_or,
    split_prefix,
    split_token,
)
from store.store import Store

# Parameters that shape the result rather than filter it.
CONTROL_PARAMS = {
    "_count", "_offset", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements",
    "_format", "_pretty", "_contained", "_containedType",
}
MAX_INCLUDES = 1000
_INDEX_OF = {
    "token": "idx_token", "string": "idx_string", "reference": "idx_reference", "date": "idx_date",
    "number": "idx_number", "quantity": "idx_quantity", "uri": "idx_uri",
}


class SearchError(ValueError):
    """A search the store cannot run as asked (unknown parameter, bad value)."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass
class SearchRequest:
    """A type-level search. ``params`` may also carry the control parameters (_sort, _include, …)."""

    resource_type: str
    params: list[tuple[str, str]] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    strict: bool = False
    base: str | None = None  # this server's base URL: absolute references on it name local resources
    compartment: str | None = None  # a patient id: search only that Patient's compartment


@dataclass
class SearchResult:
    """One page of matches in a stable order, the total, and what was included or ignored."""

    total: int | None
    keys: list[tuple[str, str]]
    included: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary_count: bool = False


class _Sql:
    """Renders values as SQL literals.

    Clauses nest (chains, _has, composites) and are assembled out of order, so
    values are inlined as properly quoted literals rather than positional
    parameters whose order would have to follow the final text.
    """

    @staticmethod
    def arg(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            if value != value or value in (float("inf"), float("-inf")):
                raise SearchError(f"number out of range: {value}")
            return repr(float(value))
        if isinstance(value, datetime):
            return f"TIMESTAMPTZ {sql_string(value.astimezone(UTC).isoformat())}"
        return sql_string(str(value))


MAX_HINT_PATIENTS = 500


def _compartment_anchor(rtype: str, code: str) -> SearchParam | None:
    """The reference parameter if its element is the first of the type's Patient compartment.

    Resources matching such a parameter on Patient/X have ``pid = X`` exactly (the store
    takes the first compartment reference as a resource's patient), so the patient can
    be used to prune every index subquery.
    """
    p = params_for(rtype).get(code)
    if p is None or p.type != "reference" or not p.expression or "|" in p.expression or "." not in p.expression:
        return None
    first = (compartment_elements().get(rtype) or [None])[0]
    top = p.expression.split(".")[1].split("(")[0]
    return p if top == first else None


@cache
def compartment_params(rtype: str) -> frozenset[str]:
    """Reference parameters through which a resource of this type is in a Patient's compartment."""
    elements = set(compartment_elements().get(rtype, ()))
    out = set()
    for code, p in params_for(rtype).items():
        if p.type != "reference" or "Patient" not in p.targets or not p.expression:
            continue
        tops = {part.strip().split(".")[1].split("(")[0].split(" ")[0]
                for part in p.expression.split("|") if part.strip().startswith(f"{rtype}.")}
        if tops & elements:
            out.add(code)
    return frozenset(out)


def _patient_hint(rtype: str, params: list[tuple[str, str]]) -> frozenset[str] | None:
    """The patients a search is anchored on (``patient=``, ``subject=Patient/…``) when that set is
    known exactly; None when the search is not patient-anchored."""
    hint: frozenset[str] | None = None
    for name, value in params:
        code, _, modifier = name.partition(":")
        p = _compartment_anchor(rtype, code)
        if p is None or modifier not in ("", "Patient") or "." in name:
            continue
        alts = split_or(value)
        bare = modifier == "Patient" or p.targets == ("Patient",)
        pids = set(alts) if bare and not any("/" in a for a in alts) else set()  # a chain's patients: many
        for alt in () if pids else alts:
            target = reference_target(alt, modifier or None)
            if isinstance(target, tuple) and (target[1] == "Patient" or (target[1] is None and bare)):
                pids.add(target[0])
            else:
                pids = set()
                break
        if not pids:
            continue
        hint = frozenset(pids) if hint is None else hint & pids
    return hint


class _NeedsSql(Exception):
    """An in-memory search reached a step only DuckDB can take."""


def _resolve_patient_chains(store: Store, rtype: str, params: list[tuple[str, str]],
                            memory_only: bool = False) -> list[tuple[str, str]] | None:
    """``params`` with each chain into Patient on the compartment anchor (``subject:Patient.name=…``)
    replaced by the patients it finds (``subject:Patient=a,b``) when they are few, so the search is
    patient-anchored; None when such a chain finds no patient (nothing can match)."""
    out = []
    for name, value in params:
        head, _, chain = name.partition(".")
        code, _, modifier = head.partition(":")
        p = _compartment_anchor(rtype, code) if chain else None
        if p is None or modifier not in ("", "Patient") or (modifier != "Patient" and p.targets != ("Patient",)):
            out.append((name, value))
            continue
        found = _search(store, SearchRequest("Patient", [(chain, value), ("_total", "none")],
                                             count=MAX_HINT_PATIENTS + 1), memory_only)
        if found is None:
            raise _NeedsSql(chain)
        if len(found.keys) > MAX_HINT_PATIENTS or found.ignored:
            out.append((name, value))
            continue
        if not found.keys:
            return None
        out.append((f"{code}:Patient", ",".join(i for _, i in found.keys)))
    return out


# ---- per-type conditions ---------------------------------------------------------------------------
def _token_cond(q: _Sql, value: str, modifier: str | None, store: Store) -> str:
    if modifier == "text":
        return f"text LIKE {q.arg('%' + norm(value) + '%')}"
    if modifier in ("in", "not-in"):
        codes = _valueset_codes(store, value)
        if not codes:
            return "false"
        return "(" + " OR ".join(f"(system = {q.arg(s)} AND code = {q.arg(c)})" for s, c in codes) + ")"
    system, code, has_bar = split_token(value)
    conds = []
    if code is not None:
        conds.append(f"code = {q.arg(code)}")
    if has_bar:
        conds.append("system IS NULL" if system == "" else f"system = {q.arg(system)}")
    return " AND ".join(conds) or "true"


def _string_cond(q: _Sql, value: str, modifier: str | None) -> str:
    if modifier == "exact":
        return f"raw = {q.arg(value)}"
    if modifier == "contains":
        return f"value LIKE {q.arg('%' + _like_escape(norm(value)) + '%')} ESCAPE '\\'"
    return f"starts_with(value, {q.arg(norm(value))})"


_JSON_STRING_CHAR = r'(?:[^"\\]|\\.)*'
"""A character of a JSON string's text, as RE2 reads it (an escape is one)."""
_NUMBER_CHAR = r"[0-9.eE+-]*"
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&#39;", "'"), ("&nbsp;", " "),
             ("&amp;", "&"))
"""The XHTML entities a narrative's text is decoded from (``&amp;`` last: ``&amp;lt;`` is ``&lt;``)."""


def _text_cond(q: _Sql, code: str, value: str) -> str:
    """``_text``: the narrative's text, its markup left out and entities decoded; ``_content``: the
    resource's string and number values (a term that is only an element's name, ``status`` say, matches
    nothing), but not ``meta.versionId`` and ``meta.lastUpdated``, which the store writes (``_content=1``
    would find every first version). Case-insensitive."""
    if code == "_text":
        like = f"ILIKE {q.arg('%' + _like_escape(value) + '%')} ESCAPE '\\'"
        texts = []
        for gap in ("' '", "''"):  # tags as a space (<p>a</p><p>b</p>) or as nothing (x<b>y</b>)
            text = f"regexp_replace(json ->> '$.text.div', '<[^>]*>', {gap}, 'g')"
            for entity, char in _ENTITIES:  # after the tags: &lt;tag&gt; is text
                text = f"replace({text}, {q.arg(entity)}, {q.arg(char)})"
            texts.append(f"{text} {like}")
        return f"({' OR '.join(texts)})"
    # a value ends before , ] or }; a property name before :
    as_json = orjson.dumps(value).decode()[1:-1]  # the term as the stored JSON spells it (\\" for ", \\n…)
    pattern = f'"{_JSON_STRING_CHAR}{re.escape(as_json)}{_JSON_STRING_CHAR}"'
    if re.fullmatch(_NUMBER_CHAR, value) and value:
        pattern = f"(?:{pattern}|[:,\\[]\\s*{_NUMBER_CHAR}{re.escape(value)}{_NUMBER_CHAR})"
    value_end = r"\s*[,\]}]"
    # the values the sender gave, not the version and time this store keeps in meta
    sent = """json_merge_patch(json, '{"meta": {"versionId": null, "lastUpdated": null}}')::VARCHAR"""
    return f"regexp_matches({sent}, {q.arg('(?i)' + pattern + value_end)})"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _uri_cond(q: _Sql, value: str, modifier: str | None) -> str:
    if modifier == "below":
        return f"starts_with(value, {q.arg(value)})"
    if modifier == "above":
        return f"starts_with({q.arg(value)}, value)"
    return f"value = {q.arg(value)}"


def _range_cond(
    q: _Sql, prefix: str, lo: Any, hi: Any, approx: tuple[Any, Any], lo_col: str = "lo", hi_col: str = "hi"
) -> str:
    """Compare an indexed range [lo_col, hi_col) with the search value's range [lo, hi) under a prefix."""
    a, b = q.arg(lo), q.arg(hi)
    match prefix:
        case "eq":
            return f"{lo_col} >= {a} AND {hi_col} <= {b}"
        case "ne":
            return f"NOT ({lo_col} >= {a} AND {hi_col} <= {b})"
        case "gt":
            return f"{hi_col} > {b}"
        case "lt":
            return f"{lo_col} < {a}"
        case "ge":
            return f"{hi_col} > {a}"
        case "le":
            return f"{lo_col} < {b}"
        case "sa":
            return f"{lo_col} >= {b}"
        case "eb":
            return f"{hi_col} <= {a}"
        case _:  # ap
            return f"{lo_col} < {q.arg(approx[1])} AND {hi_col} > {q.arg(approx[0])}"


def _date_cond(q: _Sql, value: str, lo_col: str = "lo", hi_col: str = "hi") -> str:
    prefix, rest = split_prefix(value)
    rng = parse_date(rest)
    slack = max(abs(datetime.now(UTC) - rng.lo) * 0.1, timedelta(days=1))
    return _range_cond(q, prefix, rng.lo, rng.hi, (rng.lo - slack, rng.hi + slack), lo_col, hi_col)


def _value_cond(q: _Sql, col: str, prefix: str, value: float, lo: float, hi: float) -> str:
    """Prefix comparison of a point value column with a search number and its precision range."""
    match prefix:
        case "eq":
            return f"{col} >= {q.arg(lo)} AND {col} < {q.arg(hi)}"
        case "ne":
            return f"NOT ({col} >= {q.arg(lo)} AND {col} < {q.arg(hi)})"
        case "gt" | "sa":
            return f"{col} > {q.arg(value)}"
        case "lt" | "eb":
            return f"{col} < {q.arg(value)}"
        case "ge":
            return f"{col} >= {q.arg(value)}"
        case "le":
            return f"{col} <= {q.arg(value)}"
        case _:  # ap: within 10 %
            d = abs(value) * 0.1
            return f"{col} BETWEEN {q.arg(value - d)} AND {q.arg(value + d)}"


def _number_cond(q: _Sql, value: str) -> str:
    prefix, rest = split_prefix(value)
    v, lo, hi = parse_number(rest)
    return _value_cond(q, "value", prefix, v, lo, hi)


def _quantity_cond(q: _Sql, value: str) -> str:
    qv = parse_quantity(value)
    v, lo, hi = parse_number(qv.number)
    if qv.code is None:
        cond = _value_cond(q, "value", qv.prefix, v, lo, hi)
        return cond if qv.system is None else f"system = {q.arg(qv.system)} AND {cond}"
    forms: list[str] = []
    plain = canonical(1.0, qv.code)
    if plain is None:
        # Not UCUM: compare in the unit as written.
        cond = _value_cond(q, "value", qv.prefix, v, lo, hi)
        sys = f" AND system = {q.arg(qv.system)}" if qv.system else ""
        return f"(code = {q.arg(qv.code)} OR unit = {q.arg(qv.code)}){sys} AND {cond}"
    forms.append(_canon_form(q, qv, v, lo, hi, None) + " AND (analyte IS NULL OR canon_unit = " + q.arg(plain[1]) + ")")
    if "mol" in plain[1]:
        for analyte in _molar_analytes():
            forms.append(f"analyte = {q.arg(analyte)} AND " + _canon_form(q, qv, v, lo, hi, analyte))
    return "(" + " OR ".join(f"({f})" for f in forms) + ")"


def _canon_form(q: _Sql, qv: Any, v: float, lo: float, hi: float, analyte: str | None) -> str:
    cv = canonical(v, qv.code, analyte=analyte)
    clo = canonical(lo, qv.code, analyte=analyte)
    chi = canonical(hi, qv.code, analyte=analyte)
    assert cv and clo and chi
    return f"canon_unit = {q.arg(cv[1])} AND " + _value_cond(q, "canon_value", qv.prefix, cv[0], clo[0], chi[0])


@cache
def _molar_analytes() -> list[str]:
    """Analyte keys (as the index stores them) whose molar amounts convert to mass."""
    return [a for a in analyte_keys() if molar_mass_g_per_mol(a)]


def _valueset_codes(store: Store, url: str) -> list[tuple[str, str]]:
    """Codes of a stored ValueSet (by url or id): its expansion, or its compose.include concepts."""
    row = store.cursor().execute(
        "SELECT json FROM resources WHERE resource_type = 'ValueSet' AND (json ->> 'url' = ? OR id = ?) LIMIT 1",
        [url, url.rsplit("/", 1)[-1]],
    ).fetchone()
    if row is None:
        raise SearchError(f"ValueSet {url!r} is not known to this server", param=":in")
    vs = orjson.loads(row[0])
    codes = [(c.get("system"), c.get("code")) for c in (vs.get("expansion") or {}).get("contains", [])]
    for inc in (vs.get("compose") or {}).get("include", []):
        codes += [(inc.get("system"), c.get("code")) for c in inc.get("concept", [])]
    return [(s, c) for s, c in codes if s and c]


# ---- the builder -----------------------------------------------------------------------------------
class _Builder:
    """Turns (name, value) filters of one resource type into a SQL set of ids."""

    def __init__(self, store: Store, strict: bool, hint: tuple[str, frozenset[str]] | None = None) -> None:
        self.store = store
        self.strict = strict
        self.q = _Sql()
        self.ignored: list[str] = []
        self.exact: list[Callable[[dict[str, Any]], bool]] = []  # checks on the resource the SQL cannot make
        self.warnings: list[str] = []
        self.depth = 0  # nesting of filter() calls: chains and _has run inner filters on other resources
        self.hint = hint  # (resource type, patient ids): see _patient_hint

    def pid_filter(self, rtype: str, column: str = "pid") -> str:
        """`` AND pid IN (…)`` when the search is anchored on known patients of this type."""
        if not self.hint or self.hint[0] != rtype:
            return ""
        if not self.hint[1]:
            return " AND false"
        return f" AND {column} IN ({', '.join(self.q.arg(p) for p in sorted(self.hint[1]))})"

    def ids_where(self, table: str, rtype: str, param: str, cond: str | None) -> str:
        """Subquery of the ids whose ``param`` index rows satisfy ``cond``."""
        where = f"rt = {self.q.arg(rtype)} AND param = {self.q.arg(param)}{self.pid_filter(rtype)}"
        if cond:
            where += f" AND ({cond})"
        return f"SELECT id FROM {table} WHERE {where}"

    def param(self, rtype: str, code: str) -> SearchParam:
        p = params_for(rtype).get(code)
        if p is None:
            raise SearchError(f"unknown search parameter {code!r} for {rtype}", param=code)
        return p

    def filter(self, rtype: str, name: str, value: str) -> str | None:
        """SQL condition on ``id`` for one search parameter occurrence, or None when ignored."""
        self.depth += 1
        try:
            return self._filter(rtype, name, value)
        except SearchError as exc:
            # Inside a chain or _has (depth > 1) an unknown name is the whole parameter's: ignoring only
            # the inner part would widen or empty the outer condition silently.
            if self.strict or self.depth > 1 or not _unknown(exc):
                raise
            self.ignored.append(name)
            return None
        except ValueError as exc:
            raise SearchError(f"{name}: {exc}", param=name) from None
        finally:
            self.depth -= 1

    def _filter(self, rtype: str, name: str, value: str) -> str:
        q = self.q
        if name.startswith("_has:"):
            return self._has(rtype, name, value)
        head, _, chain = name.partition(".")
        code, _, modifier = head.partition(":")
        if code == "_id":
            ids = split_or(value)
            return f"id IN ({', '.join(q.arg(i) for i in ids)})"
        if code == "_lastUpdated":
            return "(" + " OR ".join(
                f"id IN (SELECT id FROM resources WHERE resource_type = {q.arg(rtype)} AND "
                + _date_cond(q, v, "last_updated", "(last_updated + INTERVAL 1 MICROSECOND)")
                + ")"
                for v in split_or(value)
            ) + ")"
        if code in ("_text", "_content"):
            return f"id IN (SELECT id FROM resources WHERE resource_type = {q.arg(rtype)} AND {_text_cond(q, code, value)})"
        p = self.param(rtype, code)
        if chain:
            return self._chain(rtype, p, modifier, chain, value)
        if modifier == "missing":
            present = self.ids_where(_INDEX_OF.get(p.type, "idx_token"), rtype, code, None)
            if value not in ("true", "false"):
                raise SearchError(f"{name} must be true or false", param=name)
            return f"id {'NOT ' if value == 'true' else ''}IN ({present})"
        if p.type == "composite":
            return self._composite(rtype, p, value)
        if p.type == "special" and code == "near":
            return self._near(rtype, name, modifier, value)
        table = _INDEX_OF.get(p.type)
        if table is None:
            raise SearchError(f"search parameter {code!r} of type {p.type} is not supported", param=code)
        negate = modifier in ("not", "not-in")
        if modifier and not self._modifier_ok(p.type, modifier, p):
            raise SearchError(f"modifier :{modifier} is not supported on {p.type} parameter {code!r}", param=name)
        alts = split_or(value)
        inner = self._reference_list(modifier, alts) if p.type == "reference" and len(alts) > 1 else None
        if inner is None:
            inner = " OR ".join(f"({self._cond(rtype, p, modifier, v)})" for v in alts)
        sub = self.ids_where(table, rtype, code, inner)
        return f"id {'NOT ' if negate else ''}IN ({sub})"

    def _near(self, rtype: str, name: str, modifier: str | None, value: str) -> str:
        """``near`` (Location.position): read from the stored positions (see :mod:`store.near`)."""
        if modifier:
            raise SearchError(f"modifier :{modifier} is not supported on near", param=name)
        try:
            points = [parse_near(v) for v in split_or(value)]
        except ValueError as exc:
            raise SearchError(str(exc), param=name) from None
        q = self.q
        lat, lon = ("TRY_CAST(json->>'$.position.latitude' AS DOUBLE)",
                    "TRY_CAST(json->>'$.position.longitude' AS DOUBLE)")
        within = " OR ".join(f"({near_sql(p, lat, lon, q.arg)})" for p in points)
        return f"id IN (SELECT id FROM resources WHERE resource_type = {q.arg(rtype)} AND ({within}))"

    @staticmethod
    def _modifier_ok(ptype: str, modifier: str, p: SearchParam) -> bool:
        allowed = {
            "token": {"not", "text", "in", "not-in"},
            "string": {"exact", "contains"},
            "uri": {"below", "above"},
            "reference": {"identifier", *p.targets},
        }
        return modifier in allowed.get(ptype, set())

    def _cond(self, rtype: str, p: SearchParam, modifier: str | None, value: str) -> str:
        q = self.q
        match p.type:
            case "token":
                return _token_cond(q, value, modifier if modifier != "not" else None, self.store)
            case "string":
                return _string_cond(q, value, modifier)
            case "uri":
                return _uri_cond(q, value, modifier)
            case "date":
                return _date_cond(q, value)
            case "number":
                return _number_cond(q, value)
            case "quantity":
                return _quantity_cond(q, value)
            case "reference":
                return self._reference_cond(p, modifier, value)
        raise SearchError(f"unsupported parameter type {p.type}", param=p.code)

    def _reference_cond(self, p: SearchParam, modifier: str | None, value: str) -> str:
        q = self.q
        if modifier == "identifier":
            system, code, has_bar = split_token(value)
            cond = f"ident_value = {q.arg(code)}"
            return cond + (f" AND ident_system = {q.arg(system)}" if has_bar and system else "")
        target = reference_target(value, modifier)
        if isinstance(target, str):
            return f"url = {q.arg(target)}"
        rid, target_type = target
        cond = f"ref_id = {q.arg(rid)}"
        return cond + (f" AND ref_type = {q.arg(target_type)}" if target_type else "")

    def _reference_list(self, modifier: str | None, alts: list[str]) -> str | None:
        """``ref_id IN (…) AND ref_type = T`` for a list of plain references to one type (a chain into
        Patient resolves to such a list), or None: DuckDB evaluates one IN list much faster than an OR
        of a hundred pairs."""
        if modifier == "identifier":
            return None
        targets = [reference_target(v, modifier) for v in alts]
        if any(isinstance(t, str) for t in targets) or len({t[1] for t in targets}) != 1:
            return None
        target_type = targets[0][1]
        cond = f"ref_id IN ({', '.join(self.q.arg(t[0]) for t in targets)})"
        return cond + (f" AND ref_type = {self.q.arg(target_type)}" if target_type else "")

    def _chain(self, rtype: str, p: SearchParam, modifier: str, chain: str, value: str) -> str:
        if p.type != "reference":
            raise SearchError(f"{p.code} is not a reference: it cannot be chained", param=p.code)
        targets = [modifier] if modifier else list(p.targets)
        if not targets:
            raise SearchError(f"chain on {p.code} needs a target type ({p.code}:Type.param)", param=p.code)
        q = self.q
        ors = []
        for target in targets:
            if target not in R4_RESOURCE_TYPES:
                raise SearchError(f"unknown resource type {target!r} in chain", param=p.code)
            try:
                inner = self.filter(target, chain, value)
            except SearchError as exc:
                if len(targets) == 1 or not _unknown(exc):
                    raise
                continue  # a parameter some targets define: the others cannot match
            ors.append(
                f"(ref_type = {q.arg(target)} AND ref_id IN (SELECT id FROM resources WHERE resource_type = "
                f"{q.arg(target)} AND {inner}))"
            )
        if not ors:
            raise SearchError(f"unknown search parameter {chain!r} for any target of {p.code} "
                              f"({', '.join(targets)})", param=f"{p.code}.{chain}")
        return "id IN (" + self.ids_where("idx_reference", rtype, p.code, " OR ".join(ors)) + ")"

    def _has(self, rtype: str, name: str, value: str) -> str:
        # _has:Observation:patient:code=... (nested _has allowed in the tail)
        parts = _has_parts(name)
        if parts is None:
            raise SearchError(f"malformed {name!r}: expected _has:Type:reference:param", param=name)
        other, ref_param, rest = parts
        if other not in R4_RESOURCE_TYPES:
            raise SearchError(f"unknown resource type {other!r} in _has", param=name)
        ref = self.param(other, ref_param)
        if ref.type != "reference":
            raise SearchError(f"{other}.{ref_param} is not a reference parameter", param=name)
        inner = self.filter(other, rest, value)
        q = self.q
        refs = (
            f"SELECT ref_id FROM idx_reference WHERE rt = {q.arg(other)} AND param = {q.arg(ref_param)} AND "
            f"ref_type = {q.arg(rtype)} AND id IN (SELECT id FROM resources WHERE resource_type = {q.arg(other)}"
            + (f" AND {inner}" if inner else "")
            + ")"
        )
        return f"id IN ({refs})"

    def _composite(self, rtype: str, p: SearchParam, value: str) -> str:
        """Composite search: the index narrows to resources where each component matches some element;
        :mod:`store.composite` then requires one element to match them all (``self.exact``)."""
        ors, checks = [], []
        for alt in split_or(value):
            values = alt.split("$")
            if len(values) != len(p.components):
                raise SearchError(f"{p.code} expects {len(p.components)} values joined by $", param=p.code)
            codes = [_composite_component_param(rtype, p.code, comp_code) for comp_code, _, _ in p.components]
            conds = [self._filter(rtype, code, comp_value) for code, comp_value in zip(codes, values, strict=True)]
            ors.append(" AND ".join(f"({c})" for c in conds))
            checks.append(composite_predicate(rtype, p, codes, values))
        if self.depth == 1 and all(checks):
            self.exact.append(lambda resource: any(check(resource) for check in checks))
        else:
            self.warnings.append(f"{p.code}: components matched on any element, not necessarily the same one")
        return "(" + " OR ".join(ors) + ")"


def _include_problem(spec: str) -> str | None:
    """Why an ``_include``/``_revinclude`` value cannot be followed (None when it can): it must be
    ``Type:parameter[:TargetType]`` with a reference parameter of that type (or ``*``)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        return "expected Type:parameter[:TargetType]"
    src, code, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if src != "*" and src not in R4_RESOURCE_TYPES:
        return f"unknown resource type {src!r}"
    if target is not None and target not in R4_RESOURCE_TYPES:
        return f"unknown target type {target!r}"
    if code == "*" or src == "*":
        return None
    p = params_for(src).get(code)
    if p is None:
        return f"unknown search parameter {code!r} for {src}"
    if p.type != "reference":
        return f"{src}:{code} is not a reference parameter"
    if target is not None and p.targets and target not in p.targets:
        return f"{src}:{code} does not reference {target}"
    return None


def _check_includes(pairs: list[tuple[str, str]], strict: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """The ``_include``/``_revinclude`` (name, value) pairs that can be followed, and the others as
    ``name=value`` to report as ignored; under strict handling an unusable one is a 400."""
    kept, bad = [], []
    for name, value in pairs:
        problem = _include_problem(value)
        if problem is None:
            kept.append((name, value))
        elif strict:
            raise SearchError(f"{name}={value}: {problem}", param=name)
        else:
            bad.append(f"{name}={value}")
    return kept, bad


def _in_compartment(rtype: str, pid: str) -> str:
    """SQL condition on ``id``: the resource is in Patient ``pid``'s compartment (R4 CompartmentDefinition:
    it references the patient through one of :func:`compartment_params`, or it is the patient)."""
    params = sorted(compartment_params(rtype))
    conds = [f"id = {sql_string(pid)}"] if rtype == "Patient" else []
    if params:
        conds.append(f"id IN (SELECT id FROM idx_reference WHERE rt = {sql_string(rtype)} AND param IN "
                     f"({', '.join(sql_string(c) for c in params)}) AND ref_type = 'Patient' AND "
                     f"ref_id = {sql_string(pid)})")
    if not conds:
        raise SearchError(f"{rtype} is not in the Patient compartment", param=rtype)
    return conds[0] if len(conds) == 1 else "(" + " OR ".join(conds) + ")"


def _has_parts(name: str) -> tuple[str, str, str] | None:
    """(type, reference parameter, tail) of ``_has:Type:reference:tail``; None when malformed."""
    parts = name.split(":", 3)
    return (parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def _value_params(rtype: str, name: str) -> tuple[list[SearchParam], str]:
    """The parameters a search name's value is for (the last link's of a chain, on every type the links
    before it may reach; the tail's of ``_has:Type:reference:tail``) and that link's modifier."""
    if name.startswith("_has:"):
        parts = _has_parts(name)
        return _value_params(parts[0], parts[2]) if parts and parts[0] in R4_RESOURCE_TYPES else ([], "")
    types, links = {rtype}, name.split(".")
    for link in links[:-1]:
        code, _, modifier = link.partition(":")
        if modifier in R4_RESOURCE_TYPES:
            types = {modifier}
        else:
            types = {t for rt in types if (p := params_for(rt).get(code)) is not None for t in p.targets}
    code, _, modifier = links[-1].partition(":")
    return [p for rt in sorted(types) if (p := params_for(rt).get(code)) is not None], modifier


def _local_references(rtype: str, name: str, value: str, base: str) -> str:
    """A reference parameter's value (a chain's too) with URLs on this server's base made relative (see
    :func:`store.search_values.local_reference`); other parameters' values unchanged."""
    if base not in value:
        return value
    params, modifier = _value_params(rtype, name)
    if modifier == "identifier" or not any(p.type == "reference" for p in params):
        return value
    return ",".join(local_reference(alt, base).replace("\\", "\\\\").replace(",", "\\,")
                    for alt in split_or(value))


def _unknown(exc: SearchError) -> bool:
    """Whether the error names an unknown parameter or type (ignored and reported under lenient handling)."""
    return exc.status == 400 and exc.param is not None and str(exc).startswith("unknown")


def _composite_component_param(rtype: str, composite: str, component: str) -> str:
    """The plain parameter that indexes one component of a composite (e.g. combo-code for combo-…)."""
    prefix = composite.rsplit("-", 2)[0] if composite.startswith(("combo-", "component-")) else ""
    candidates = [f"{prefix}-{component}" if prefix else component, component]
    if composite.startswith(("combo-", "component-")) and component in ("code", "value-quantity", "value-concept"):
        head = composite.split("-", 1)[0]
        candidates.insert(0, f"{head}-{component}")
    for c in candidates:
        if c in params_for(rtype):
            return c
    return component


# ---- sort, include, run ----------------------------------------------------------------------------
_SORT_COLUMN = {
    "token": "code", "string": "value", "uri": "value", "number": "value", "quantity": "canon_value",
    "reference": "url",
}


def _order_by(b: _Builder, rtype: str, sort: str) -> tuple[str, str]:
    """(joins, ORDER BY list) for a ``_sort`` value."""
    joins, keys = [], []
    for n, key in enumerate(k for k in sort.split(",") if k):
        desc = key.startswith("-")
        code = key.lstrip("-")
        direction = "DESC" if desc else "ASC"
        if code == "_id":
            keys.append(f"r.id {direction}")
            continue
        if code == "_lastUpdated":
            keys.append(f"r.last_updated {direction}")
            continue
        p = b.param(rtype, code)
        table = _INDEX_OF.get(p.type)
        if table is None:
            raise SearchError(f"cannot sort by {p.type} parameter {code!r}", param="_sort")
        col = ("hi" if desc else "lo") if p.type == "date" else _SORT_COLUMN[p.type]
        agg = "max" if desc else "min"
        alias = f"s{n}"
        joins.append(
            f"LEFT JOIN (SELECT id, {agg}({col}) AS k FROM {table} WHERE rt = {b.q.arg(rtype)} AND "
            f"param = {b.q.arg(code)}{b.pid_filter(rtype)} GROUP BY id) {alias} ON {alias}.id = r.id"
        )
        keys.append(f"{alias}.k {direction} NULLS LAST")
    return " ".join(joins), ", ".join(keys)


def _includes(
    store: Store, keys: list[tuple[str, str]], specs: list[str], reverse: bool, pid_filter: str = ""
) -> tuple[set, bool]:
    """Keys that ``_include``/``_revinclude`` specs add for the given page; (keys, capped)."""
    found: set[tuple[str, str]] = set()
    if not keys or not specs:
        return found, False
    cur = store.cursor()
    for spec in specs:
        parts = spec.split(":")
        if len(parts) < 2:
            raise SearchError(f"malformed include {spec!r}: expected Type:param[:Target]", param="_include")
        src, param, target = parts[0], parts[1], parts[2] if len(parts) > 2 else None
        if src not in R4_RESOURCE_TYPES and src != "*":
            raise SearchError(f"unknown resource type {src!r} in include", param="_include")
        args: list[Any] = []
        if reverse:
            wanted = [k for k in keys if target is None or k[0] == target]
            if not wanted:
                continue
            pairs = " OR ".join("(ref_type = ? AND ref_id = ?)" for _ in wanted)
            for t, i in wanted:
                args += [t, i]
            param_cond = "" if param == "*" else " AND param = ?"
            sql = f"SELECT rt, id FROM idx_reference WHERE rt = ?{param_cond} AND ({pairs}) LIMIT {MAX_INCLUDES + 1}"
            rows = cur.execute(sql, [src, *([param] if param != "*" else []), *args]).fetchall()
        else:
            ids = [i for t, i in keys if t == src or src == "*"]
            if not ids:
                continue
            param_cond = "" if param == "*" else " AND param = ?"
            target_cond = " AND ref_type = ?" if target else ""
            sql = (
                f"SELECT ref_type, ref_id FROM idx_reference WHERE rt = ?{param_cond}{target_cond}{pid_filter} "
                "AND ref_id IS NOT NULL "
                f"AND ref_type <> '' AND id IN ({','.join('?' * len(ids))}) LIMIT {MAX_INCLUDES + 1}"
            )
            params = [keys[0][0] if src == "*" else src]
            rows = cur.execute(
                sql, [*params, *([param] if param != "*" else []), *([target] if target else []), *ids]
            ).fetchall()
        found.update((t, i) for t, i in rows)
        if len(found) > MAX_INCLUDES:
            return set(list(found)[:MAX_INCLUDES]), True
    return found, False


def search(store: Store, req: SearchRequest) -> SearchResult:
    """Run a type-level search and return one page of keys, the total and the included keys."""
    result = _search(store, req, memory_only=False)
    assert result is not None
    return result


def search_in_memory(store: Store, req: SearchRequest) -> SearchResult | None:
    """The search answered from what the caches already hold, or None when it needs DuckDB or is
    invalid (:func:`search` then answers or reports it). Cheap enough to run on an event loop."""
    token = patient_cache.NO_LOADS.set(True)
    try:
        return _search(store, req, memory_only=True)
    except (SearchError, patient_cache.Unsupported, _NeedsSql):  # e.g. an _include's rows are not loaded
        return None
    finally:
        patient_cache.NO_LOADS.reset(token)


def _search(store: Store, req: SearchRequest, memory_only: bool) -> SearchResult | None:
    rtype = req.resource_type
    conds: list[str] = []
    filters: list[tuple[str, str]] = []
    sort = ""
    includes: list[str] = []
    revincludes: list[str] = []
    iterate = False
    total_mode = "accurate"
    summary_count = False
    count, offset = req.count, req.offset
    include_pairs: list[tuple[str, str]] = []
    for name, value in req.params:
        if name == "_sort":
            sort = value
        elif name.startswith(("_include", "_revinclude")):
            include_pairs.append((name, value))
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise SearchError("_total must be none, estimate or accurate", param="_total")
            total_mode = value
        elif name == "_summary":
            summary_count = value == "count"
        elif name == "_count":
            count = _nonneg_int(value, "_count")
        elif name == "_offset":
            offset = _nonneg_int(value, "_offset")
        elif name not in CONTROL_PARAMS:
            filters.append((name, value))
    if rtype not in R4_RESOURCE_TYPES:
        raise SearchError(f"unknown resource type {rtype!r}", status=404)
    include_pairs, bad_includes = _check_includes(include_pairs, req.strict)
    for name, value in include_pairs:
        (revincludes if name.startswith("_revinclude") else includes).append(value)
        iterate = iterate or name.endswith(":iterate")
    if req.base:
        filters = [(name, _local_references(rtype, name, value, req.base)) for name, value in filters]
    if any("." in name for name, _ in filters):
        resolved = _resolve_patient_chains(store, rtype, filters, memory_only)
        if resolved is None:
            counted = total_mode != "none" or summary_count
            return SearchResult(total=0 if counted else None, keys=[], ignored=bad_includes,
                                summary_count=summary_count)
        filters = resolved
    pids = _patient_hint(rtype, filters)
    b = _Builder(store, req.strict, (rtype, pids) if pids is not None else None)
    b.ignored += bad_includes
    counted = total_mode != "none" or summary_count
    # The in-memory paths parse every value they use and decline (None) what they cannot answer
    # exactly, including unknown parameters and bad values, which the SQL builder then reports.
    query = _in_memory_query(rtype, filters, sort)
    if req.compartment is not None:
        conds.append(_in_compartment(rtype, req.compartment))
        query = None  # the in-memory paths hold no compartment links other than the resource's first patient
    columns = None if memory_only and (includes or revincludes) else _columns_page(
        store, query, pids, offset, count)
    if columns is None:
        fast = _patient_search(store, query, pids, includes, bool(revincludes) or iterate)
        if fast is None and memory_only:
            return None
        if fast is not None:
            matched, entries = fast
            total = len(matched) if counted else None
            if summary_count:
                return SearchResult(total=total, keys=[], ignored=b.ignored, summary_count=True)
            page = patient_cache.order(matched, sort, offset + count)[offset:]
            included = patient_cache.forward_includes(entries, rtype, page, includes) - {(rtype, i) for i in page}
            return SearchResult(total=total, keys=[(rtype, i) for i in page], included=sorted(included),
                                ignored=b.ignored)
    else:
        n, ids = columns
        if summary_count:
            return SearchResult(total=n, keys=[], ignored=b.ignored, summary_count=True)
        return _with_includes(store, b, rtype, n if counted else None, [(rtype, i) for i in ids],
                              includes, revincludes, iterate)
    for name, value in filters:
        cond = b.filter(rtype, name, value)
        if cond is not None:
            conds.append(cond)
    # Positive conditions are ``id IN (subquery)`` on the index tables; the rest (NOT IN, ORs,
    # _lastUpdated, text) filter the resources rows.
    positive = [c[len("id IN ("):-1] for c in conds if c.startswith("id IN (SELECT ") and c.endswith(")")
                and _balanced(c[len("id IN ("):-1])]
    others = [c for c in conds if not (c.startswith("id IN (") and c[len("id IN ("):-1] in positive)]
    where = " AND ".join([f"resource_type = {sql_string(rtype)}{b.pid_filter(rtype, 'patient_id')}",
                          *(f"({c})" for c in others)])
    if b.exact:
        exact = _exact_ids(store, rtype, where, positive, b.exact)
        if exact is None:
            b.warnings.append(f"composite parameters over more than {MAX_INDEX_ONLY} candidates: components "
                              "matched on any element, not necessarily the same one")
        else:
            positive = []
            where = (f"resource_type = {sql_string(rtype)} AND "
                     + (f"id IN ({', '.join(sql_string(i) for i in exact)})" if exact else "false"))
    by_hot_map = all(k.lstrip("-") in ("_id", "_lastUpdated") for k in sort.split(",") if k)
    ordered = _index_only(store, rtype, positive, sort) if positive and not others and by_hot_map else None
    if ordered is not None:
        total = len(ordered) if counted else None
        if summary_count:
            return SearchResult(total=total, keys=[], ignored=b.ignored, summary_count=True)
        keys = [(rtype, i) for i in ordered[offset: offset + count]]
    else:
        total, keys = _sql_page(store, b, rtype, where, positive, sort, counted, summary_count, count, offset)
        if summary_count:
            return SearchResult(total=total, keys=[], ignored=b.ignored, summary_count=True)
    return _with_includes(store, b, rtype, total, keys, includes, revincludes, iterate)


def _with_includes(store: Store, b: _Builder, rtype: str, total: int | None, keys: list[tuple[str, str]],
                   includes: list[str], revincludes: list[str], iterate: bool) -> SearchResult:
    """The page's result with what ``_include``/``_revinclude`` add (SQL over the index)."""
    included: set[tuple[str, str]] = set()
    warnings: list[str] = list(b.warnings)
    if not includes and not revincludes:
        return SearchResult(total=total, keys=keys, ignored=b.ignored, warnings=warnings)
    frontier = keys
    for _ in range(3 if iterate else 1):
        inc, capped_i = _includes(store, frontier, includes, reverse=False,
                                  pid_filter=b.pid_filter(rtype) if frontier is keys else "")
        rev, capped_r = _includes(store, frontier, revincludes, reverse=True)
        new = (inc | rev) - included - set(keys)
        if capped_i or capped_r:
            warnings.append(f"_include/_revinclude stopped at {MAX_INCLUDES} resources")
        included |= new
        frontier = sorted(new)
        if not new:
            break
    return SearchResult(
        total=total, keys=keys, included=sorted(included), ignored=b.ignored, warnings=warnings
    )


def _sql_page(
    store: Store, b: _Builder, rtype: str, where: str, positive: list[str], sort: str, counted: bool,
    summary_count: bool, count: int, offset: int,
) -> tuple[int | None, list[tuple[str, str]]]:
    """(total, page of keys) from one DuckDB query over the resources rows, sorted by any parameter."""
    if positive:
        # Intersecting the subqueries is several times faster in DuckDB than chaining semi-joins.
        # Conditions name the bare column ``id``: in the outer query that is resources.id.
        candidates = " INTERSECT ".join(f"({sub})" for sub in positive)
        matches = (f"(SELECT id, last_updated FROM resources WHERE {where} "
                   f"AND id IN (SELECT * FROM ({candidates})))")
    else:
        matches = f"(SELECT id, last_updated FROM resources WHERE {where})"
    cur = store.cursor()
    if summary_count:
        return cur.execute(f"SELECT count(*) FROM {matches}").fetchone()[0], []
    joins, order = _order_by(b, rtype, sort) if sort else ("", "")
    order_sql = ", ".join(x for x in (order, "r.last_updated ASC", "r.id ASC") if x)
    window = ", count(*) OVER () AS total" if counted else ""
    sql = (f"SELECT r.id{window} FROM {matches} r {joins} ORDER BY {order_sql} "
           f"LIMIT {int(count)} OFFSET {int(offset)}")
    rows = cur.execute(sql).fetchall()
    total = None
    if counted:
        # An empty page says nothing about the total when it was cut by _count=0 or an offset.
        total = rows[0][1] if rows else (
            cur.execute(f"SELECT count(*) FROM {matches}").fetchone()[0] if offset or not count else 0)
    return total, [(rtype, r[0]) for r in rows]


MAX_INDEX_ONLY = 20_000


def _capped_ids(store: Store, sql: str) -> list[str] | None:
    """The first column of a query's rows, or None when there are more than MAX_INDEX_ONLY."""
    rows = store.cursor().execute(f"{sql} LIMIT {MAX_INDEX_ONLY + 1}").fetchall()
    return None if len(rows) > MAX_INDEX_ONLY else [r[0] for r in rows]


def _index_only(store: Store, rtype: str, positive: list[str], sort: str) -> list[str] | None:
    """Every match in order, from the index tables alone, or None when there are too many.

    The ``resources`` rows are only needed for ``lastUpdated`` and liveness, which the hot map
    holds: skipping them saves a scan of the largest table (~100 ms at a million resources) when
    the search is a set of index conditions sorted by ``_lastUpdated``/``_id`` (the default).
    """
    ids = _capped_ids(store, "SELECT DISTINCT * FROM (" + " INTERSECT ".join(f"({sub})" for sub in positive) + ")")
    if ids is None:
        return None
    current = store.current_many([(rtype, rid) for rid in ids])
    found = []
    for rid in ids:
        cur = current.get((rtype, rid))
        if cur is not None and not cur.deleted:
            found.append((cur.last_updated, rid))
    found.sort()
    for key in reversed([k for k in sort.split(",") if k]):  # stable sorts, last key first
        column = 0 if key.lstrip("-") == "_lastUpdated" else 1
        found.sort(key=lambda f, c=column: f[c], reverse=key.startswith("-"))
    return [rid for _, rid in found]


def _exact_ids(store: Store, rtype: str, where: str, positive: list[str],
               checks: list[Callable[[dict[str, Any]], bool]]) -> list[str] | None:
    """The candidates the SQL conditions find that also pass the checks on the resource itself
    (composites), or None when there are more than MAX_INDEX_ONLY candidates to check."""
    sql = f"SELECT id FROM resources WHERE {where}"
    if positive:
        sql += " AND id IN (SELECT * FROM (" + " INTERSECT ".join(f"({sub})" for sub in positive) + "))"
    ids = _capped_ids(store, sql)
    if ids is None:
        return None
    return [rid for _, rid, raw in store.read_many([(rtype, rid) for rid in ids])
            if all(check(orjson.loads(raw)) for check in checks)]


MAX_CACHED_PATIENTS = MAX_HINT_PATIENTS  # patients a search may span on the in-memory path (loaded together)
IN_MEMORY = True  # False answers every search in DuckDB (tests run both paths)


def _in_memory_query(rtype: str, filters: list[tuple[str, str]], sort: str) -> patient_cache.Query | None:
    """The search parsed for the in-memory paths, or None when they cannot answer it (SQL will)."""
    if not IN_MEMORY:
        return None
    try:
        return patient_cache.prepare(rtype, filters, sort)
    except (patient_cache.Unsupported, ValueError):
        return None


def _patient_search(
    store: Store, query: patient_cache.Query | None, pids: frozenset[str] | None, includes: list[str],
    sql_only: bool,
) -> tuple[list, list] | None:
    """Answer a search anchored on known patients (``pids``), or over a small type, from the in-memory
    patient cache, or None (use SQL)."""
    if query is None or sql_only or (pids is not None and len(pids) > MAX_CACHED_PATIENTS):
        return None
    try:
        patient_cache.forward_includes([], query.rtype, [], includes)
        cache = patient_cache.cache_for(store)
        if pids is not None:
            entries = cache.get_many(sorted(pids))
        elif (whole := cache.type_entry(query.rtype)) is not None:
            entries = [whole]
        else:
            return None
        matched = patient_cache.evaluate(entries, query)
    except (patient_cache.Unsupported, ValueError):
        return None
    return matched, entries


COLUMNS_MIN_PATIENTS = 24  # from this many patients on, the type's columns beat the patient cache (measured)


def _columns_page(
    store: Store, query: patient_cache.Query | None, pids: frozenset[str] | None, offset: int, count: int,
) -> tuple[int, list[str]] | None:
    """(total, page of ids) of an equality search over many patients or a whole large type, from the
    type's columns (store.type_columns), or None (another path answers)."""
    if query is None or (pids is not None and len(pids) < COLUMNS_MIN_PATIENTS):
        return None
    try:
        return type_columns.search(store, query, offset, count)
    except (patient_cache.Unsupported, ValueError):
        return None


def _balanced(sql: str) -> bool:
    """Whether parentheses balance (so ``id IN (…)`` was one subquery, not ``id IN (…) OR …``)."""
    depth = 0
    for ch in sql:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _nonneg_int(value: str, name: str) -> int:
    try:
        out = int(value)
    except ValueError:
        raise SearchError(f"{name} must be an integer, got {value!r}", param=name) from None
    if out < 0:
        raise SearchError(f"{name} must not be negative", param=name)
    return out


# ---- system-level search ---------------------------------------------------------------------------
_EVERY_TYPE = {"_id", "_lastUpdated", "_text", "_content"}


def stored_types(store: Store) -> list[str]:
    """Resource types with at least one current resource (what a search without ``_type`` covers)."""
    return sorted({t for t, in store.cursor().execute(
        "SELECT DISTINCT resource_type FROM resources_current WHERE NOT deleted").fetchall()})


def search_system(store: Store, params: list[tuple[str, str]], count: int = 50, offset: int = 0,
                  strict: bool = False, base: str | None = None) -> SearchResult:
    """``GET [base]?…``: one search over several types (``_type``, else every stored type).

    A filter must mean the same on every type searched (the common parameters, or one every listed
    type defines); otherwise it is refused (strict) or ignored and reported, never applied to some
    types only. Each type's search gives its first ``offset + count`` matches; the page is their
    merge by the sort (``_lastUpdated``/``_id``; default lastUpdated, type, id), and includes are
    computed for that page.
    """
    types: list[str] = []
    for name, value in params:
        if name == "_type":
            for t in split_or(value):
                if t not in R4_RESOURCE_TYPES:
                    raise SearchError(f"unknown resource type {t!r} in _type", param="_type")
                types.append(t)
    types = sorted(set(types)) if types else stored_types(store)
    kept: list[tuple[str, str]] = []
    ignored: list[str] = []
    includes: list[tuple[str, str]] = []
    sort, total_mode, summary_count = "", "accurate", False
    for name, value in params:
        code = name.partition(":")[0].partition(".")[0]
        if name == "_type":
            continue
        if name == "_sort":
            if any(k.lstrip("-") not in ("_id", "_lastUpdated") for k in value.split(",") if k):
                raise SearchError("a search across types sorts by _lastUpdated or _id only", param="_sort")
            sort = value
        elif name.startswith(("_include", "_revinclude")):
            includes.append((name, value))
        elif name in CONTROL_PARAMS:
            total_mode = value if name == "_total" else total_mode
            summary_count = summary_count or (name, value) == ("_summary", "count")
        elif name.startswith("_has:") or code in _EVERY_TYPE or all(code in params_for(t) for t in types):
            kept.append((name, value))
        elif strict:
            raise SearchError(f"search parameter {code!r} is not defined for every type searched", param=name)
        else:
            ignored.append(name)
    includes, bad_includes = _check_includes(includes, strict)
    ignored += bad_includes
    ordering = [("_sort", sort)] if sort else []
    per_type = [(t, search(store, SearchRequest(t, [*kept, *ordering, ("_total", total_mode)], count=offset + count,
                                                strict=strict, base=base)))
                for t in types]
    totals = [r.total for _, r in per_type]
    total = None if any(t is None for t in totals) else sum(totals)
    if summary_count:
        return SearchResult(total=total, keys=[], ignored=ignored, summary_count=True)
    merged = []
    current = store.current_many([key for _, r in per_type for key in r.keys])
    for t, r in per_type:
        for key in r.keys:
            cur = current.get(key)
            if cur is not None:
                merged.append((cur.last_updated, t, key[1]))
    merged.sort()
    for key in reversed([k for k in sort.split(",") if k]):
        column = 0 if key.lstrip("-") == "_lastUpdated" else 2
        merged.sort(key=lambda m, c=column: m[c], reverse=key.startswith("-"))
    keys = [(t, i) for _, t, i in merged[offset: offset + count]]
    included: set[tuple[str, str]] = set()
    capped = False
    for name, value in includes:
        found, cut = _includes(store, keys, [value], reverse=name.startswith("_revinclude"))
        included |= found
        capped = capped or cut
    warnings = [w for _, r in per_type for w in r.warnings]
    if capped:
        warnings.append(f"_include/_revinclude stopped at {MAX_INCLUDES} resources")
    return SearchResult(total=total, keys=keys, included=sorted(included - set(keys)),
                        ignored=[*ignored, *sorted({i for _, r in per_type for i in r.ignored})], warnings=warnings)
