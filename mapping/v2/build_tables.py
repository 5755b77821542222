"""Compile the HL7 v2-to-FHIR IG mapping spreadsheets into ``data/*.json``.

The IG publishes its maps as CSV sheets (messages → segments → datatypes →
vocabulary), each with two header rows whose column layout varies from sheet to
sheet. This script finds the columns by header name, parses each row's target path,
condition and assignment once, and writes compact JSON the mapper loads at import.
Sheets under ``data/local/`` (same layout) add maps the IG does not have yet
(pharmacy messages, MRG → Patient.link) and win over the IG on a name clash; a local
sheet whose name ends in ``- additions`` is put in front of the IG sheet instead.

Rows the interpreter cannot execute (free-text conditions, paths into a referenced
resource such as ``diagnosis.condition(Condition.code)``) are counted and skipped;
``--report`` lists them.

    .venv/bin/python -m mapping.v2.build_tables [--source DIR] [--report]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mapping.v2.values import PRIMITIVE_TYPES

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
LOCAL = DATA / "local"
SHARED = HERE.parents[1] / ".." / "shared" / "data"
DEFAULT_SOURCE = SHARED / "hl7v2" / "v2-to-fhir-mappings"
FHIR_R4 = SHARED / "fhir-r4"
STRUCTURES = HERE.parents[1] / "ingest" / "hl7v2" / "data" / "structures.json"
"""The message structures the grouping uses, per version family (read as data, not imported)."""

_NAME = re.compile(r"_ (?P<name>[A-Za-z0-9]+\[[^\]]+\]|[A-Za-z0-9_]+(?:\[[^\]]+\])?) - ")
_REF = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})-(?P<field>\d+)(?:\.(?P<comp>\d+))?(?:\.(?P<sub>\d+))?$")
_DT_REF = re.compile(r"^(?P<dt>[A-Z][A-Z0-9]{1,3})\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?$")
_STEP = re.compile(r"^(?P<name>[A-Za-z$][A-Za-z0-9]*)(?:\[(?P<idx>\d+|n|\d+-\d+|each)\])?$")
EACH = "each"
EACH_SHARED = 0
"""The list slot of what every ``[each]`` element shares (IG slots start at 1)."""
"""``component[each]``: one list element per repetition of the sheet's repeating field, each
also holding what the sheet's single-valued fields write there (OBX-3 code, OBX-6 units)."""


def sheet_name(path: Path) -> str:
    """``HL7 Segment - FHIR R4_ PID[Patient] - PID.csv`` → ``PID[Patient]``."""
    m = _NAME.search(path.name)
    return m.group("name") if m else path.stem


def _columns(header1: list[str], header2: list[str]) -> dict[str, int]:
    """Column index by role; the first ``Data Type``/``Cardinality - Max`` is the v2 one."""
    cols: dict[str, int] = {}
    for i, raw in enumerate(header2):
        h = raw.strip().split("\n")[0].strip()
        role = {
            "Identifier": "id",
            "Code": "code",
            "Text": "text",
            "Code System": "system",
            "Display": "display",
            "Syntax": "syntax",
            "Computable ANTLR": "cond",
            "Data Type Mapping": "dtmap",
            "Vocabulary Mapping": "vocab",
            "Assignment": "assign",
            "Primary Target": "target",
            "Segment Map": "segmap",
            "References": "refs",
        }.get(h)
        if h.startswith("FHIR Attribute"):
            role = "path"
        elif h == "Data Type":
            role = "v2type" if "v2type" not in cols else "ftype"
        elif h == "Cardinality - Max":
            role = "v2max" if "v2max" not in cols else "fmax"
        elif h == "Code" and "code" in cols:
            role = "fcode"
        elif h == "Code System" and "system" in cols:
            role = "fsystem"
        if role and role not in cols:
            cols[role] = i
    if "id" not in cols and "path" in cols:  # some sheets leave the v2 headers blank
        cols.update({"id": 1, "v2type": 3, "v2max": 5})
    return cols


def read_sheet(path: Path) -> tuple[dict[str, int], list[list[str]]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        return {}, []
    return _columns(rows[0], rows[1]), rows[2:]


def _cell(row: list[str], cols: dict[str, int], role: str) -> str:
    i = cols.get(role)
    return row[i].strip() if i is not None and i < len(row) else ""


# --- conditions -------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"[^"]*")|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<num>\d+(?:\.\d+)?(?![-.\w]))'
    r"|(?P<op>!=|=)|(?P<word>[A-Za-z0-9_.\-$]+))"
)


class _Unsupported(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _Unsupported(text)
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "op":  # OBX-2="ED" is written both ways in the IG
            out.extend([("word", "NOT"), ("word", "EQUALS")] if m.group(kind) == "!=" else [("word", "EQUALS")])
            continue
        out.append((kind, m.group(kind)))
    return out


class _CondParser:
    """Recursive descent over the IG's condition phrases (IF X VALUED AND Y IN (…) …)."""

    def __init__(self, text: str, ref_parser: Any) -> None:
        toks = _tokens(text)
        self.t = [(k, v.upper() if k == "word" else v) for k, v in toks]
        self.i = 0
        self.ref = ref_parser

    def peek(self, n: int = 0) -> tuple[str, str]:
        j = self.i + n
        return self.t[j] if j < len(self.t) else ("eof", "")

    def eat(self, value: str) -> bool:
        if self.peek()[1] == value:
            self.i += 1
            return True
        return False

    def parse(self) -> Any:
        node = self.or_expr()
        while self.eat(")"):
            pass
        if self.peek()[0] != "eof":
            raise _Unsupported
        return node

    def or_expr(self) -> Any:
        node = self.and_expr()
        while self.eat("OR"):
            node = ["or", node, self.and_expr()]
        return node

    def and_expr(self) -> Any:
        node = self.atom()
        while self.eat("AND"):
            node = ["and", node, self.atom()]
        return node

    def atom(self) -> Any:
        self.eat("IF")
        if self.eat("("):
            node = self.or_expr()
            self.eat(")")
            return node
        kind, word = self.peek()
        if kind != "word":
            raise _Unsupported
        self.i += 1
        ref = self.ref(word)
        if ref is None:
            raise _Unsupported
        for word, op_name in (("LST.COUNT", "count"), ("LENGTH", "length")):  # PID-7 LENGTH GREATER THAN 8
            if self.eat(word):
                op = self.comparison()
                kind, num = self.peek()
                if kind != "num":
                    raise _Unsupported
                self.i += 1
                return [op_name, ref, op, float(num)]
        negate = False
        self.eat("IS")
        if self.eat("NOT"):
            negate = True
        if self.eat("VALUED") or self.eat("VALUE"):
            return ["not_valued" if negate else "valued", ref]
        if self.eat("DOES"):
            if self.eat("NOT") and self.eat("EXIST"):
                return ["not_valued", ref]
            raise _Unsupported
        if self.eat("EQUALS") or self.eat("EQUAL"):
            kind, word = self.peek()
            other = self.ref(word) if kind == "word" else None
            if other is not None:
                self.i += 1
                return ["neref" if negate else "eqref", ref, other]
            return ["ne" if negate else "eq", ref, self.string()]
        if self.eat("IN"):
            return ["not_in" if negate else "in", ref, self.string_list()]
        if self.peek()[0] == "str":
            return ["ne" if negate else "eq", ref, self.string()]
        raise _Unsupported

    def comparison(self) -> str:
        words = []
        while self.peek()[1] in ("LESS", "GREATER", "THAN", "OR", "EQUALS", "EQUAL"):
            words.append(self.peek()[1])
            self.i += 1
        op = " ".join(words)
        table = {"LESS THAN": "<", "GREATER THAN": ">", "LESS THAN OR EQUALS": "<=", "GREATER THAN OR EQUALS": ">="}
        if op not in table:
            raise _Unsupported
        return table[op]

    def string(self) -> str:
        kind, value = self.peek()
        if kind != "str":
            raise _Unsupported
        self.i += 1
        return value[1:-1]

    def string_list(self) -> list[str]:
        if not self.eat("("):
            raise _Unsupported
        out = [self.string()]
        while self.eat(","):
            out.append(self.string())
        if not self.eat(")"):
            raise _Unsupported
        return out


def parse_condition(text: str, *, datatype: bool) -> Any:
    """Condition AST, ``None`` for no condition; raises _Unsupported when not computable."""
    if not text:
        return None
    return _CondParser(text, _dt_ref if datatype else _seg_ref).parse()


def _seg_ref(word: str) -> list[Any] | None:
    if re.fullmatch(r"[A-Z][A-Z0-9]{2}", word):
        return [word, 0, 0, 0]  # the segment itself: rows that apply whenever it is present
    m = _REF.match(word)
    if not m:
        return None
    return [m.group("seg"), int(m.group("field")), int(m.group("comp") or 0), int(m.group("sub") or 0)]


def _dt_ref(word: str) -> list[Any] | None:
    m = _DT_REF.match(word)
    if not m:
        return None
    return ["", int(m.group("comp")), int(m.group("sub") or 0), 0]


# --- paths and assignments --------------------------------------------------------


def parse_path(path: str) -> tuple[list[list[Any]], str | None, int | None]:
    """``identifier[2].type.coding.code`` → steps ``[[name, slot], …]``.

    A trailing ``(Type)`` names a resource to create and reference; a leading
    ``[k].`` (datatype sheets producing several values) gives the output slot ``k``.
    """
    path = path.strip().rstrip(".")
    output = None
    m = re.match(r"^\[(\d+)\]\.?", path)
    if m:
        output = int(m.group(1))
        path = path[m.end():]
    ref_type = None
    m = re.search(r"\((?P<type>[A-Z][A-Za-z]+)(?:\[\d+\])?\)$", path)
    if m:
        ref_type = m.group("type")
        path = path[: m.start()]
    if "(" in path or ")" in path or " " in path:
        raise _Unsupported(path)
    steps: list[list[Any]] = []
    if path:
        for part in path.split("."):
            sm = _STEP.match(part)
            if not sm:
                raise _Unsupported(path)
            idx = sm.group("idx")
            if idx == EACH:
                slot: Any = EACH  # numbered by compile_rules, which knows whether the field repeats
            else:
                slot = 1 if idx in (None, "n") else int(idx.split("-")[0])  # line[1-3]: a map filling lines 1..3
            steps.append([sm.group("name"), slot, idx is not None])
    return steps, ref_type, output


def parse_concatenation(text: str) -> list[Any] | None:
    """A datatype sheet's ``"+"+XTN.5+" "+XTN.6+" "+XTN.7``: literal texts and components of
    the same value (``[component, subcomponent]``) joined in order; ``None`` for anything else,
    and for joins with a delimiter (NA's ``NA.1+"^"+NA.2``: the value as sent, which the built-in
    conversion gives with the message's own delimiters)."""
    items: list[Any] = []
    for token in re.findall(r'"[^"]*"|[^+\s"]+|\S', text.strip()):
        if token == "+":
            continue
        if token.startswith('"'):
            items.append(token[1:-1])
            continue
        ref = _dt_ref(token)
        if ref is None:
            return None
        items.append([ref[1], ref[2]])
    if any(isinstance(i, str) and set(i) & set("|^~\\&") for i in items):
        return None
    joined = any(isinstance(i, list) for i in items) and any(isinstance(i, str) for i in items)
    return items if joined else None


def parse_assignment(text: str) -> str | None:
    """Only literal assignments (``"home"``) are executable; expressions are skipped."""
    if not text:
        return None
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"' and text.count('"') == 2:
        return text[1:-1]
    raise _Unsupported(text)


def _strip_type_prefix(steps: list[list[Any]], sheet: str) -> list[list[Any]]:
    """``CWE[Quantity]`` rows say ``Quantity.code``: drop the redundant type step."""
    target = sheet.split("[", 1)[1].rstrip("]") if "[" in sheet else ""
    if steps and steps[0][0] == target.split("-")[0]:
        return steps[1:]
    return steps


# --- FHIR R4 element definitions --------------------------------------------------

_BACKBONE = {"BackboneElement", "Element"}


class R4Elements:
    """Cardinality and type of every element path in the R4 resources and datatypes.

    The IG's paths say ``identifier[2]`` for list slots but also ``valueCodeableConcept[1]``
    for singletons; only the R4 definitions can tell whether the JSON needs an array.
    """

    def __init__(self, folder: Path) -> None:
        self.el: dict[str, tuple[bool, list[str]]] = {}
        self.required: dict[str, list[str]] = {}
        self.resources: set[str] = set()
        for name in ("profiles-types.json", "profiles-resources.json"):
            bundle = json.loads((folder / name).read_text())
            for entry in bundle["entry"]:
                sd = entry["resource"]
                if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                    continue
                if sd.get("kind") == "resource":
                    self.resources.add(sd["id"])
                for el in sd.get("snapshot", {}).get("element", []):
                    parent, _, child = el["path"].rpartition(".")
                    if parent and el.get("min", 0) >= 1:
                        self.required.setdefault(parent, []).append(child.replace("[x]", ""))
                    types = [t["code"] for t in el.get("type", []) if "code" in t]
                    if "contentReference" in el:
                        types = ["#" + el["contentReference"].lstrip("#")]
                    self.el[el["path"]] = (el.get("max", "1") not in ("0", "1"), types)

    def resolve(self, root: str, steps: list[list[Any]]) -> tuple[list[list[Any]], str]:
        """Steps annotated ``[name, slot, is_array]`` and the leaf type; raises _Unsupported.

        A step into a choice element (``valueString``) carries its base name as a fourth
        item (``value``), so the engine can keep one ``value[x]`` when two rows fill it.
        """
        out: list[list[Any]] = []
        base = root
        leaf = root
        for name, slot, _ in steps:
            if leaf in PRIMITIVES and out:
                out[-1][0] = "_" + out[-1][0]  # extensions on a primitive live in _name
                base = "Element"
            path = f"{base}.{name}"
            choice = None
            if path in self.el:
                is_array, types = self.el[path]
            else:
                is_array, types, choice = self._choice(base, name)
            if not types:
                raise _Unsupported(path)
            t = types[0]
            if t.startswith("#"):
                base = t[1:]
            elif t in _BACKBONE:
                base = path
            else:
                base = t
            leaf = t
            out.append([name, slot, is_array, choice] if choice else [name, slot, is_array])
        return out, leaf

    def _choice(self, base: str, name: str) -> tuple[bool, list[str], str]:
        for i in range(len(name) - 1, 0, -1):
            if name[i].isupper():
                path = f"{base}.{name[:i]}[x]"
                if path in self.el:
                    wanted = name[i:]
                    for t in self.el[path][1]:
                        if t.lower() == wanted.lower():
                            return False, [t], name[:i]
        raise _Unsupported(f"{base}.{name}")


PRIMITIVES = PRIMITIVE_TYPES


def sheet_target(name: str) -> str:
    """``OBX[Observation-Component]`` → ``Observation``; ``CWE[code]`` → ``code``."""
    inner = name.split("[", 1)[1].rstrip("]") if "[" in name else name
    return inner.split("-")[0].split(".")[0]


# --- sheets -----------------------------------------------------------------------


def _path_note_assignment(row: list[str], cols: dict[str, int]) -> str:
    """``assign: "SHIP"`` written in the column beside the path (SPM-32) instead of the assignment column."""
    i = cols.get("path")
    note = row[i + 1].strip() if i is not None and i + 1 < len(row) else ""
    m = re.fullmatch(r'assign:\s*("[^"]*")', note)
    return m.group(1) if m else ""


_ASSIGNED_TARGET = re.compile(r'(?P<path>[^="]+)="(?P<value>[^"]*)"')
"""A target written with its value (``status="finished"``) instead of in the assignment column."""


def compile_rules(
    path: Path, *, datatype: bool, skipped: Counter[str], r4: R4Elements
) -> list[dict[str, Any]]:
    cols, rows = read_sheet(path)
    name = sheet_name(path)
    root = sheet_target(name)
    if root[:1].islower() or root.lower() in {p.lower() for p in PRIMITIVES}:
        return []  # primitive targets (CWE[code], HD[uri], …) are built-in conversions
    rules = []
    for row in rows:
        ident = _cell(row, cols, "id")
        target = _cell(row, cols, "path")
        if not ident or not target:
            continue
        ref = _dt_ref(ident) if datatype else _seg_ref(ident)
        if ref is None:
            skipped[f"{name}: identifier {ident}"] += 1
            continue
        assigned = _ASSIGNED_TARGET.fullmatch(target.strip())
        assignment = _cell(row, cols, "assign") or _path_note_assignment(row, cols)
        literal = f'"{assigned["value"]}"' if assigned else None
        if literal and assignment.strip() in ("", literal):  # status="finished": the value in the path column
            target, assignment = assigned["path"], literal
        this_map = _this_map(ident, target, _cell(row, cols, "dtmap"), _cell(row, cols, "v2type"), root, datatype)
        if this_map:  # SCH-11 -> $this: TQ[Appointment] fills the Appointment itself (start, end)
            target = ""
        try:
            steps, ref_type, output = parse_path(target)
            if this_map:
                output = 1
            if datatype:
                steps = _strip_type_prefix(steps, name)
            cond = parse_condition(_cell(row, cols, "cond"), datatype=datatype)
            concat = parse_concatenation(assignment) if datatype else None
            assign = parse_assignment(assignment) if concat is None else None
            steps, leaf = r4.resolve(root, steps)
        except _Unsupported:
            skipped[f"{name}: {ident} -> {target}"] += 1
            continue
        if ref[1] == 0 and assign is None:
            skipped[f"{name}: {ident} -> {target} (no value source)"] += 1
            continue
        if output not in (None, 1) or (not steps and ref_type is None and output is None):
            skipped[f"{name}: {ident} -> {target}"] += 1
            continue
        dtmap = this_map or _canonical_map(_cell(row, cols, "dtmap").split(" ")[0]) or None
        if dtmap and leaf == "Reference" and ref_type is None:
            target = sheet_target(dtmap)
            if target in r4.resources:
                ref_type = target  # a Reference filled by a datatype map names the resource to create
        own = [ref[0], ref[1], ref[2], ref[3]] if not datatype else ["", ref[1], ref[2], 0]
        vocab = _cell(row, cols, "vocab").split("\n")[0].strip() or None
        v2max = _cell(row, cols, "v2max")
        for step in steps:
            if step[1] == EACH:  # a repeating field's values: one element each; a single value: shared by all
                step[1] = 1 if v2max in ("-1", "*") else EACH_SHARED
        rules.append(
            {
                "f": ref[1] if not datatype else ref[1],
                "c": ref[2] if not datatype else ref[2],
                "steps": steps,
                "ref": ref_type,
                "type": ref_type or leaf,
                "dt": _cell(row, cols, "v2type") or None,
                "map": dtmap,
                "vocab": vocab,
                "assign": assign,
                "cond": cond,
                "rep": v2max in ("-1", "*"),
                "when_empty": assign is not None and _tests_empty(cond, own),
            }
        )
        if concat is not None:
            rules[-1]["concat"] = concat
    return rules


def this_component(path: Path) -> int | None:
    """The component a primitive target's sheet (``MSG[code]``: ``MSG.2 → $this``) converts, when it
    names one: the built-in conversion reads that component instead of the first."""
    name = sheet_name(path)
    root = sheet_target(name)
    if not (root[:1].islower() or root.lower() in {p.lower() for p in PRIMITIVES}):
        return None
    cols, rows = read_sheet(path)
    for row in rows:
        ref = _dt_ref(_cell(row, cols, "id"))
        if ref is not None and _cell(row, cols, "path").strip() == "$this":
            return int(ref[1])
    return None


_MAP_CASE: dict[str, str] = {}


THIS_ROWS = frozenset({"SCH-11"})
"""``$this`` rows compiled so far; the others (ORC-7/OBR-27 TQ[ServiceRequest] turning an
occurrenceDateTime into a date-only Timing, NK1, SPM …) change resources in ways not reviewed yet."""


def _this_map(ident: str, target: str, dtmap: str, v2type: str, root: str, datatype: bool) -> str | None:
    """The datatype map a segment row targeting ``$this`` (the resource itself) applies: the one it
    names, else the sheet of its v2 type for this resource (``TQ[Appointment]`` for SCH-11)."""
    if datatype or target.strip() != "$this" or ident not in THIS_ROWS:
        return None
    name = _canonical_map(dtmap.split(" ")[0] or f"{v2type.strip()}[{root}]")
    return name if name.lower() in _MAP_CASE else None


def _canonical_map(name: str) -> str:
    """``PL[location]`` → ``PL[Location]``: sheet names are matched case-insensitively."""
    return _MAP_CASE.get(name.lower(), name)


def _tests_empty(cond: Any, own: list[Any]) -> bool:
    """A literal assigned ``IF <own field> NOT VALUED`` must run when the field is empty."""
    if not cond:
        return False
    if cond[0] == "not_valued":
        return cond[1][:3] == own[:3]
    if cond[0] in ("and", "or"):
        return _tests_empty(cond[1], own) or _tests_empty(cond[2], own)
    return False


def keep_both_numbers(segments: dict[str, list[dict[str, Any]]]) -> None:
    """Drop the IG's mutual exclusions between two segments filling one resource.

    ORC[ServiceRequest] writes ORC-2 ``IF OBR-2 NOT VALUED`` and OBR[ServiceRequest] writes
    OBR-2 ``IF ORC-2 NOT VALUED``: meant as "write the order number once", it writes it
    never when both segments send it. Each such mirrored pair of rows is compiled without
    its condition: finishing joins the two identifiers when they are equal (same slot of two
    sheets), and keeps both when they differ.
    """
    def exclusion(rule: dict[str, Any], own: str) -> tuple[str, int] | None:
        cond = rule["cond"]
        if cond and cond[0] == "not_valued" and cond[1][0] != own and cond[1][1] == rule["f"] and not any(cond[1][2:]):
            return cond[1][0], rule["f"]
        return None

    mirrored = []
    for name, rules in segments.items():
        own, _, target = name.partition("[")
        for rule in rules:
            other = exclusion(rule, own)
            if other is None:
                continue
            mirror = segments.get(f"{other[0]}[{target}", [])
            if any(exclusion(r, other[0]) == (own, rule["f"]) for r in mirror):
                mirrored.append(rule)
    for rule in mirrored:
        rule["cond"] = None
        rule["when_empty"] = False


def compile_vocab(path: Path) -> dict[str, list[str]]:
    cols, rows = read_sheet(path)
    out: dict[str, list[str]] = {}
    for row in rows:
        code = _cell(row, cols, "code")
        fcode = _cell(row, cols, "fcode")
        if not code or not fcode or code in out:
            continue
        out[code] = [fcode, _cell(row, cols, "display"), _cell(row, cols, "fsystem")]
    return out


def compile_message(path: Path, skipped: Counter[str], r4: R4Elements,
                    segments: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A target may name the element the segment map fills (``Observation[2].note`` with
    NTE's map, which writes ``note.text``, ``note.time``) when every rule of the map writes
    under that element: such a row (``adds``) adds to the resource another segment made."""
    cols, rows = read_sheet(path)
    out = []
    for row in rows:
        ident = _cell(row, cols, "id")
        segmap = _cell(row, cols, "segmap")
        target = _cell(row, cols, "target")
        if not ident or ident.startswith("/") or not segmap or not target:
            continue
        parts = ident.replace(":follow:", ".").split(".")
        seg = parts[-1]
        if not re.match(r"^[A-Z][A-Z0-9]{2}$", seg):
            continue
        m = re.match(r"^(?P<type>[A-Z][A-Za-z]+)(?:\[(?P<idx>\w+)\])?(?:\.(?P<element>[a-z][A-Za-z]*))?$",
                     target.strip())
        rules = segments.get(segmap.split(" ")[0], [])
        if not m or (m.group("element") and not (rules and all(r["steps"][0][0] == m.group("element")
                                                                for r in rules))):
            skipped[f"{path.name}: target {target}"] += 1
            continue
        try:
            cond = parse_condition(_cell(row, cols, "cond"), datatype=False)
        except _Unsupported:
            skipped[f"{sheet_name(path)}: {ident} condition"] += 1
            continue
        out.append(
            {
                "groups": [p for p in parts[1:-1] if p != "PID"],
                "seg": seg,
                "type": m.group("type"),
                "key": f"{m.group('type')}[{m.group('idx') or '1'}]",
                "map": segmap.split(" ")[0],
                "adds": bool(m.group("element")),
                "cond": cond,
                "refs": _resolve_refs(parse_refs(_cell(row, cols, "refs")), r4, skipped, path.name),
            }
        )
    return out


_REF_ASSIGN = re.compile(
    r"(?P<a>[A-Z][A-Za-z]+(?:\[\w+\])?)\.(?P<path>[A-Za-z.\[\]0-9]+?)(?:\.reference)?\s*=\s*"
    r'(?:(?P<b>[A-Z][A-Za-z]+(?:\[\w+\])?)\.id|"(?P<lit>[^"]*)")'
)


def parse_refs(text: str) -> list[list[str]]:
    """``Observation[2].subject.reference=Patient[1].id`` → ``[["Observation[2]", "subject", "Patient[1]", ""]]``."""
    out = []
    for m in _REF_ASSIGN.finditer(text):
        a = m.group("a") if "[" in m.group("a") else m.group("a") + "[1]"
        b = m.group("b") or ""
        if b and "[" not in b:
            b += "[1]"
        out.append([a, m.group("path"), b, m.group("lit") or ""])
    return out


def _resolve_refs(refs: list[list[str]], r4: R4Elements, skipped: Counter[str], where: str) -> list[Any]:
    out = []
    for a, path, b, lit in refs:
        try:
            steps, _ = parse_path(path)[0], None
            steps, leaf = r4.resolve(a.split("[")[0], steps)
            if b and leaf != "Reference":
                raise _Unsupported(path)
        except _Unsupported:
            skipped[f"{where}: reference {a}.{path}"] += 1
            continue
        out.append([a, steps, b, lit])
    return out


def structure_groups(structures: Path = STRUCTURES) -> dict[str, dict[str, list[str]]]:
    """Version family → structure → the names of its groups. The IG names groups of the
    newest structures (``ORDER_OBSERVATION.COMMON_ORDER.ORC``); the mapper leaves out of a
    row's group path the groups the message's own structure does not have."""

    def names(items: list[Any]) -> set[str]:
        out: set[str] = set()
        for item in items:
            if len(item) > 3:
                out |= {item[0]} | names(item[3])
        return out

    raw = json.loads(structures.read_text())
    return {family: {name: sorted(names(items)) for name, items in defs.items()} for family, defs in raw.items()}


def build(source: Path, fhir_r4: Path = FHIR_R4) -> tuple[dict[str, Any], Counter[str]]:
    skipped: Counter[str] = Counter()
    r4 = R4Elements(fhir_r4)
    for base in (source / "datatypes", LOCAL / "datatypes"):
        for path in base.glob("*.csv"):
            _MAP_CASE[sheet_name(path).lower()] = sheet_name(path)
    tables: dict[str, Any] = {"segments": {}, "datatypes": {}, "vocab": {}, "messages": {},
                              "primitive_components": {}}
    for kind, folder in (("segments", "segments"), ("datatypes", "datatypes")):
        for base in (source / folder, LOCAL / folder):
            for path in sorted(base.glob("*.csv")):
                rules = compile_rules(path, datatype=kind == "datatypes", skipped=skipped, r4=r4)
                name = sheet_name(path)
                if path.stem.endswith("- additions"):  # local rows placed before the IG's (first wins)
                    rules = rules + tables[kind].get(name, [])
                tables[kind][name] = rules
    for base in (source / "datatypes", LOCAL / "datatypes"):
        for path in sorted(base.glob("*.csv")):
            component = this_component(path)
            if component not in (None, 1):
                tables["primitive_components"][sheet_name(path)] = component
    keep_both_numbers(tables["segments"])
    for base in (source / "codesystems", LOCAL / "codesystems"):
        for path in sorted(base.glob("*.csv")):
            tables["vocab"][sheet_name(path)] = compile_vocab(path)
    for base in (source / "messages", LOCAL / "messages"):
        for path in sorted(base.glob("*.csv")):
            tables["messages"][sheet_name(path)] = compile_message(path, skipped, r4, tables["segments"])
    emitted = set(json.loads((DATA / "config.json").read_text())["emit"])
    tables["structure_groups"] = structure_groups()
    tables["required"] = {path: kids for path, kids in r4.required.items() if path.split(".")[0] in emitted}
    return tables, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--report", action="store_true", help="list the rows that were skipped")
    args = ap.parse_args()
    tables, skipped = build(args.source)
    for kind, content in tables.items():
        (DATA / f"{kind}.json").write_text(json.dumps(content, separators=(",", ":"), sort_keys=True) + "\n")
    counts = {k: len(v) for k, v in tables.items()}
    print(f"compiled {counts}; skipped {sum(skipped.values())} rows the interpreter cannot execute")
    if args.report:
        for what, n in sorted(skipped.items()):
            print(f"  {n:3d}  {what}")


if __name__ == "__main__":
    main()
