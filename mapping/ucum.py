"""UCUM unit normalization and a small unit algebra.

Two jobs, both needed wherever quantities from different feeds meet:

* :func:`to_ucum` turns the unit strings hospital systems actually send (HL7v2 OBX-6,
  RXA-7, sloppy FHIR ``Quantity.unit``) into case-correct UCUM codes, e.g. ``MG/DL`` ->
  ``mg/dL``, ``K/uL`` -> ``10*3/uL``, ``lbs`` -> ``[lb_av]``.
* :func:`canonical` converts a value to a canonical base-unit form so quantities compare
  across units (99 mg/dL glucose and 5.5 mmol/L glucose both become about 0.99 g.L-1).

The canonical form is a dot-separated product of base atoms with signed integer
exponents, in the fixed order ``g, mol, eq, [iU], U, L|m, s, K, C, cd, rad``; it is itself
a valid UCUM code (``g.L-1``, ``mol.L-1``, ``U.s-1``, ``L.s-1``, ``g.m-1.s-2``, ``/min`` ->
``s-1``). Lengths stay in
``m`` except when the length exponent is a multiple of three, which is written as litres
(``m3`` -> ``L``) because concentrations per litre are what the clinic reads. A
dimensionless quantity has the code ``1`` (``%`` -> value / 100). Temperatures become
``K``. When ``analyte`` names a substance with a known molar mass (a LOINC code or a name
in ``data/analyte_molar_mass.csv``), amounts of substance are converted to mass so molar
and mass concentrations of that analyte share one canonical unit. ``eq``, ``[iU]`` and
``U`` stay separate dimensions: converting them needs knowledge of the substance that
UCUM itself does not carry.

All vocabularies (prefixes, units, sloppy aliases, molar masses) are CSV files under
``mapping/data``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"

BASE_ATOMS: tuple[str, ...] = ("g", "mol", "eq", "[iU]", "U", "m", "s", "K", "C", "cd", "rad")
_M = BASE_ATOMS.index("m")
_G = BASE_ATOMS.index("g")
_MOL = BASE_ATOMS.index("mol")
_NO_DIMS: tuple[int, ...] = (0,) * len(BASE_ATOMS)

Dims = tuple[int, ...]


class UcumError(ValueError):
    """A unit code that is not (supported) UCUM."""


@dataclass(frozen=True, slots=True)
class UnitTerm:
    """A parsed unit: value_in_base = factor * (value + offset); offset only for Cel/[degF]."""

    factor: float
    dims: Dims
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class _Atom:
    factor: float
    dims: Dims
    metric: bool
    offset: float


def _read_csv(name: str) -> list[dict[str, str]]:
    with (_DATA / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _load_prefixes() -> dict[str, float]:
    return {row["prefix"]: float(row["factor"]) for row in _read_csv("ucum_prefixes.csv")}


def _load_atoms() -> dict[str, _Atom]:
    atoms: dict[str, _Atom] = {}
    rows = _read_csv("ucum_units.csv")
    for row in rows:
        code, definition = row["code"], row["definition"]
        if code in BASE_ATOMS and definition == code:
            dims = tuple(1 if b == code else 0 for b in BASE_ATOMS)
            atoms[code] = _Atom(1.0, dims, row["metric"] == "yes", 0.0)
    base_only = {code: atom for code, atom in atoms.items()}
    base_only["1"] = _Atom(1.0, _NO_DIMS, False, 0.0)
    for row in rows:
        code = row["code"]
        if code in atoms:
            continue
        term = _parse_expression(row["definition"], base_only, {})
        atoms[code] = _Atom(
            float(row["factor"]) * term.factor,
            term.dims,
            row["metric"] == "yes",
            float(row["offset"]) if row["offset"] else 0.0,
        )
    return atoms


def _load_aliases() -> dict[str, str]:
    return {row["text"]: row["ucum"] for row in _read_csv("ucum_aliases.csv")}


def _load_molar_masses() -> dict[str, float]:
    masses: dict[str, float] = {}
    for row in _read_csv("analyte_molar_mass.csv"):
        mass = float(row["molar_mass_g_per_mol"])
        masses[row["loinc"]] = mass
        masses[row["analyte"].lower()] = mass
    return masses


# --------------------------------------------------------------------------- parser

_SEPARATORS = "./"
_ANNOTATABLE_END = "./(){}"
_ATOM_EXPONENT = re.compile(r"^(?P<atom>.*?[^\d+-])(?P<exp>[+-]?\d+)?$")


def _resolve_atom(symbol: str, atoms: dict[str, _Atom], prefixes: dict[str, float]) -> _Atom:
    atom = atoms.get(symbol)
    if atom is not None:
        return atom
    for size in (2, 1):
        prefix_factor = prefixes.get(symbol[:size])
        unit = atoms.get(symbol[size:]) if prefix_factor is not None else None
        if unit is not None and unit.metric:
            return _Atom(prefix_factor * unit.factor, unit.dims, True, unit.offset)  # type: ignore[operator]
    raise UcumError(f"unknown unit atom {symbol!r}")


class _Parser:
    """Recursive descent over the UCUM grammar (terms, components, exponents, annotations)."""

    def __init__(self, text: str, atoms: dict[str, _Atom], prefixes: dict[str, float]) -> None:
        self.text = text
        self.pos = 0
        self.atoms = atoms
        self.prefixes = prefixes

    def parse(self) -> UnitTerm:
        if not self.text:
            raise UcumError("empty unit")
        if self.text.startswith("/"):
            self.pos = 1
            factor, dims, offset = self._term()
            factor, dims = 1.0 / factor, tuple(-d for d in dims)
        else:
            factor, dims, offset = self._term()
        if self.pos != len(self.text):
            raise UcumError(f"unexpected {self.text[self.pos]!r} at {self.pos} in {self.text!r}")
        return UnitTerm(factor, dims, offset)

    def _term(self) -> tuple[float, Dims, float]:
        factor, dims, offset = self._component()
        while self.pos < len(self.text) and self.text[self.pos] in _SEPARATORS:
            op = self.text[self.pos]
            self.pos += 1
            f2, d2, off2 = self._component()
            if offset or off2:
                raise UcumError(f"{self.text!r}: Cel/[degF] cannot be combined with other units")
            if op == ".":
                factor, dims = factor * f2, tuple(a + b for a, b in zip(dims, d2, strict=True))
            else:
                factor, dims = factor / f2, tuple(a - b for a, b in zip(dims, d2, strict=True))
        return factor, dims, offset

    def _component(self) -> tuple[float, Dims, float]:
        text = self.text
        if self.pos >= len(text):
            raise UcumError(f"{text!r}: unit expected at end")
        char = text[self.pos]
        if char == "(":
            self.pos += 1
            result = self._term()
            if self.pos >= len(text) or text[self.pos] != ")":
                raise UcumError(f"{text!r}: missing ')'")
            self.pos += 1
            return result
        if char == "{":
            self._annotation()
            return 1.0, _NO_DIMS, 0.0
        start = self.pos
        depth = 0
        while self.pos < len(text):
            c = text[self.pos]
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif depth == 0 and c in _ANNOTATABLE_END:
                break
            self.pos += 1
        symbol = text[start : self.pos]
        if self.pos < len(text) and text[self.pos] == "{":
            self._annotation()
        if not symbol:
            raise UcumError(f"{text!r}: unit expected at {start}")
        if symbol.isdigit():
            return float(symbol), _NO_DIMS, 0.0
        match = _ATOM_EXPONENT.match(symbol)
        if match is None:
            raise UcumError(f"{text!r}: cannot read {symbol!r}")
        atom = _resolve_atom(match["atom"], self.atoms, self.prefixes)
        exponent = int(match["exp"]) if match["exp"] else 1
        if atom.offset and exponent != 1:
            raise UcumError(f"{text!r}: Cel/[degF] cannot carry an exponent")
        return atom.factor**exponent, tuple(d * exponent for d in atom.dims), atom.offset

    def _annotation(self) -> None:
        end = self.text.find("}", self.pos)
        if end < 0:
            raise UcumError(f"{self.text!r}: unterminated annotation")
        self.pos = end + 1


def _parse_expression(code: str, atoms: dict[str, _Atom], prefixes: dict[str, float]) -> UnitTerm:
    return _Parser(code, atoms, prefixes).parse()


_PREFIXES = _load_prefixes()
_ATOMS = _load_atoms()
_ALIASES = _load_aliases()
_MOLAR_MASS_G_PER_MOL = _load_molar_masses()


@lru_cache(maxsize=4096)
def parse(code: str) -> UnitTerm:
    """Parse a case-sensitive UCUM code into factor, base dimensions and offset.

    Raises :class:`UcumError` for codes outside the supported UCUM subset.
    """
    return _parse_expression(code, _ATOMS, _PREFIXES)


def is_ucum(code: str) -> bool:
    """True when ``code`` is a UCUM expression this module understands."""
    try:
        parse(code)
    except UcumError:
        return False
    return True


# --------------------------------------------------------------------------- to_ucum

_POWER_OF_TEN = re.compile(r"(?i)(?<![\w*])x?\s*10\s*(?:\^|\*|e)\s*([+-]?\d+)")
_SPACED_SEPARATOR = re.compile(r"\s*([./])\s*")
_MICRO = str.maketrans({"µ": "u", "μ": "u"})


def _split_tokens(text: str) -> list[str] | None:
    """Split on '.' and '/' outside braces/brackets, keeping separators; None if parenthesised."""
    tokens: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char in "([":
            if char == "(":
                return None
            depth += 1
        elif char in "{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif depth == 0 and char in _SEPARATORS:
            tokens.append(current)
            tokens.append(char)
            current = ""
            continue
        current += char
    tokens.append(current)
    return tokens


def _normalize_token(token: str) -> str | None:
    """Alias first; a token shouted in capitals is read in lower case before as written."""
    if token == "":
        return ""
    lower = token.lower()
    alias = _ALIASES.get(lower)
    if alias is not None:
        return alias
    shouted = sum(c.isalpha() for c in token) > 1 and token.isupper()
    for candidate in (lower, token) if shouted else (token,):
        if is_ucum(candidate):
            return candidate
    return None


@lru_cache(maxsize=4096)
def to_ucum(unit_text: str) -> str | None:
    """Map a unit string as found in the wild to a case-correct UCUM code; None if unknown.

    Order: a whole-string alias (case-insensitive, ``data/ucum_aliases.csv``), then a
    token-by-token normalization split at ``.`` and ``/``: each token is looked up in the
    same alias table (case-insensitively) and otherwise kept when it is valid UCUM as
    written (``MCG/KG/MIN`` -> ``ug/kg/min``, ``mmol/l`` -> ``mmol/L``, ``{beats}/min`` kept).
    Sloppy input is read case-insensitively, so ``MM`` means millimetre, never megametre.
    """
    text = unit_text.strip().translate(_MICRO)
    if not text:
        return None
    alias = _ALIASES.get(text.lower())
    if alias is not None:
        return alias
    text = _SPACED_SEPARATOR.sub(r"\1", _POWER_OF_TEN.sub(r"10*\1", text))
    tokens = _split_tokens(text)
    if tokens is None:
        return None
    normalized: list[str] = []
    for token in tokens:
        if token in _SEPARATORS:
            normalized.append(token)
            continue
        mapped = _normalize_token(token)
        if mapped is None:
            return None
        normalized.append(mapped)
    result = "".join(normalized)
    return result if is_ucum(result) else None


# --------------------------------------------------------------------------- canonical


def analyte_keys() -> list[str]:
    """Analyte LOINC codes with a known molar mass (the keys an index stores beside quantities)."""
    return sorted(k for k in _MOLAR_MASS_G_PER_MOL if k[:1].isdigit())


def molar_mass_g_per_mol(analyte: str) -> float | None:
    """Molar mass for an analyte given as LOINC code or name (case-insensitive)."""
    return _MOLAR_MASS_G_PER_MOL.get(analyte) or _MOLAR_MASS_G_PER_MOL.get(analyte.lower())


@lru_cache(maxsize=8192)
def _canonical_term(ucum_code: str, analyte: str | None) -> tuple[float, float, str] | None:
    """(factor, offset, canonical code) for a unit, or None when unparseable."""
    try:
        term = parse(ucum_code)
    except UcumError:
        return None
    factor, dims = term.factor, list(term.dims)
    if analyte is not None and dims[_MOL]:
        mass = molar_mass_g_per_mol(analyte)
        if mass is not None:
            factor *= mass ** dims[_MOL]
            dims[_G] += dims[_MOL]
            dims[_MOL] = 0
    parts: list[str] = []
    for index, (atom, exponent) in enumerate(zip(BASE_ATOMS, dims, strict=True)):
        if not exponent:
            continue
        if index == _M and exponent % 3 == 0:
            factor *= 1000.0 ** (exponent // 3)
            atom, exponent = "L", exponent // 3
        parts.append(atom if exponent == 1 else f"{atom}{exponent}")
    # 12 significant digits hide binary noise from chained prefix factors (1e-3 * 1e-6 ...).
    return float(f"{factor:.12g}"), term.offset, ".".join(parts) or "1"


def canonical(value: float, ucum_code: str, *, analyte: str | None = None) -> tuple[float, str] | None:
    """Convert ``value`` in ``ucum_code`` to (value, canonical code); None if not UCUM.

    See the module docstring for the canonical form. ``analyte`` (LOINC code or name)
    enables molar <-> mass conversion for substances with a known molar mass.
    """
    found = _canonical_term(ucum_code, analyte)
    if found is None:
        return None
    factor, offset, code = found
    return factor * (value + offset), code


def convert(value: float, from_code: str, to_code: str, *, analyte: str | None = None) -> float | None:
    """Convert between two commensurable UCUM units (e.g. mmol/L -> mg/dL for glucose); None if not."""
    source = _canonical_term(from_code, analyte)
    target = _canonical_term(to_code, analyte)
    if source is None or target is None or source[2] != target[2]:
        return None
    base_value = source[0] * (value + source[1])
    result = base_value / target[0] - target[1]
    return result if math.isfinite(result) else None
