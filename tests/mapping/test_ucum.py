"""UCUM normalization: sloppy unit text -> UCUM, and the canonical unit algebra."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mapping.ucum import UcumError, canonical, convert, is_ucum, molar_mass_g_per_mol, parse, to_ucum

SLOPPY_TO_UCUM = [
    ("mg/dl", "mg/dL"),
    ("MG/DL", "mg/dL"),
    ("mg / dL", "mg/dL"),
    ("mmol/l", "mmol/L"),
    ("MMOL/L", "mmol/L"),
    ("K/uL", "10*3/uL"),
    ("x10E3/uL", "10*3/uL"),
    ("10^3/uL", "10*3/uL"),
    ("10*3/uL", "10*3/uL"),
    ("x10E9/L", "10*9/L"),
    ("units", "U"),
    ("IU", "[IU]"),
    ("U/hr", "U/h"),
    ("mcg", "ug"),
    ("µg/mL", "ug/mL"),
    ("ug/mL", "ug/mL"),
    ("MCG/KG/MIN", "ug/kg/min"),
    ("%", "%"),
    ("kg", "kg"),
    ("lbs", "[lb_av]"),
    ("cm", "cm"),
    ("in", "[in_i]"),
    ("mm[Hg]", "mm[Hg]"),
    ("mmHg", "mm[Hg]"),
    ("mm Hg", "mm[Hg]"),
    ("bpm", "/min"),
    ("/min", "/min"),
    ("{beats}/min", "{beats}/min"),
    ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
    ("mL/min/{1.73_m2}", "mL/min/{1.73_m2}"),
    ("g", "g"),
    ("mg", "mg"),
    ("mg/L", "mg/L"),
    ("L/h", "L/h"),
    ("mEq/L", "meq/L"),
    ("mIU/mL", "m[IU]/mL"),
    ("kPa", "kPa"),
    ("°F", "[degF]"),
    ("Cel", "Cel"),
    ("kg/m2", "kg/m2"),
]


@pytest.mark.parametrize(("text", "expected"), SLOPPY_TO_UCUM)
def test_to_ucum_maps_sloppy_text(text: str, expected: str) -> None:
    assert to_ucum(text) == expected
    assert is_ucum(expected)


@pytest.mark.parametrize("text", ["", "   ", "foo", "pH", "(score)", "mg/furlong"])
def test_to_ucum_unknown_is_none(text: str) -> None:
    assert to_ucum(text) is None


# (value, unit, value, unit, analyte): both sides must have the same canonical value.
EQUIVALENCES = [
    (5.5, "mmol/L", 99.088, "mg/dL", "2339-0"),
    (1.0, "mmol/L", 18.016, "mg/dL", "glucose"),
    (7.0, "mmol/L", 126.112, "mg/dL", "99504-3"),
    (88.4, "umol/L", 1.0, "mg/dL", "2160-0"),
    (1.0, "kg", 1000.0, "g", None),
    (1.0, "[lb_av]", 453.59237, "g", None),
    (1.0, "[in_i]", 2.54, "cm", None),
    (1.0, "dL", 100.0, "mL", None),
    (1.0, "g/dL", 10.0, "g/L", None),
    (1.0, "mg/dL", 10.0, "mg/L", None),
    (1.0, "ng/mL", 1.0, "ug/L", None),
    (1.0, "U/h", 24.0, "U/d", None),
    (1.0, "h", 60.0, "min", None),
    (1.0, "d", 24.0, "h", None),
    (60.0, "/min", 1.0, "/s", None),
    (72.0, "{beats}/min", 72.0, "/min", None),
    (50.0, "%", 0.5, "1", None),
    (760.0, "mm[Hg]", 101.325, "kPa", None),
    (37.0, "Cel", 98.6, "[degF]", None),
    (0.0, "Cel", 273.15, "K", None),
    (1.0, "10*3/uL", 1.0, "10*9/L", None),
    (1.0, "mL/min/{1.73_m2}", 1.0, "mL/min", None),
    (1.0, "[IU]/L", 1.0, "m[iU]/mL", None),
    (1.0, "meq/L", 1.0, "eq/m3", None),
]


@pytest.mark.parametrize(("v1", "u1", "v2", "u2", "analyte"), EQUIVALENCES)
def test_known_equivalences(v1: float, u1: str, v2: float, u2: str, analyte: str | None) -> None:
    left = canonical(v1, u1, analyte=analyte)
    right = canonical(v2, u2, analyte=analyte)
    assert left is not None and right is not None
    assert left[1] == right[1]
    assert math.isclose(left[0], right[0], rel_tol=1e-4)


def test_canonical_forms_are_documented_codes() -> None:
    assert canonical(99.0, "mg/dL", analyte="2339-0") == pytest.approx((0.99, "g.L-1"))
    assert canonical(5.5, "mmol/L") == pytest.approx((0.0055, "mol.L-1"))
    assert canonical(90.0, "mL/min") == pytest.approx((0.0015, "L.s-1"))
    assert canonical(1.0, "10*3/uL") == (1e9, "L-1")
    assert canonical(180.0, "cm")[1] == "m"  # type: ignore[index]
    assert canonical(25.0, "kg/m2")[1] == "g.m-2"  # type: ignore[index]
    assert canonical(120.0, "mm[Hg]")[1] == "g.m-1.s-2"  # type: ignore[index]
    assert canonical(3.0, "{score}") == (3.0, "1")
    for code in ("g.L-1", "mol.L-1", "L.s-1", "L-1", "g.m-1.s-2"):
        assert is_ucum(code)


def test_glucose_molar_and_mass_compare_equal_within_rounding() -> None:
    molar = canonical(5.5, "mmol/L", analyte="2339-0")
    mass = canonical(99.0, "mg/dL", analyte="2339-0")
    assert molar is not None and mass is not None and molar[1] == mass[1]
    assert abs(molar[0] - mass[0]) / mass[0] < 0.002


def test_molar_mass_table() -> None:
    assert molar_mass_g_per_mol("2345-7") == pytest.approx(180.16)
    assert molar_mass_g_per_mol("Creatinine") == pytest.approx(113.12)
    assert molar_mass_g_per_mol("38483-4") == pytest.approx(113.12)
    assert molar_mass_g_per_mol("0000-0") is None


def test_molar_conversion_only_with_known_analyte() -> None:
    assert convert(5.5, "mmol/L", "mg/dL") is None
    assert convert(5.5, "mmol/L", "mg/dL", analyte="unknown-analyte") is None
    assert convert(5.5, "mmol/L", "mg/dL", analyte="41653-7") == pytest.approx(99.088)


def test_incommensurable_and_invalid_units() -> None:
    assert convert(1.0, "mg", "mL") is None
    assert convert(1.0, "U", "[iU]") is None
    assert canonical(1.0, "pH") is None
    assert canonical(1.0, "mg/") is None
    assert canonical(1.0, "Cel/h") is None
    with pytest.raises(UcumError):
        parse("kfoo")


def test_parser_grammar() -> None:
    assert parse("kg.m2/s2").dims == parse("J").dims
    assert parse("/(s.m)").factor == pytest.approx(1.0)
    assert parse("(kg/m2)").dims == parse("g.m-2").dims
    assert parse("10*-3").factor == pytest.approx(1e-3)
    assert parse("dag").factor == pytest.approx(10.0)
    assert parse("cd").factor == 1.0  # candela, not centi-day


CONVERTIBLE = [
    ("mg/dL", "mmol/L", "2339-0"),
    ("kg", "[lb_av]", None),
    ("cm", "[in_i]", None),
    ("U/h", "U/min", None),
    ("mL/min", "L/h", None),
    ("Cel", "[degF]", None),
    ("mm[Hg]", "kPa", None),
    ("10*3/uL", "10*9/L", None),
    ("umol/L", "mg/dL", "creatinine"),
]

finite_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(value=finite_values, pair=st.sampled_from(CONVERTIBLE))
def test_convert_round_trip(value: float, pair: tuple[str, str, str | None]) -> None:
    source, target, analyte = pair
    there = convert(value, source, target, analyte=analyte)
    assert there is not None
    back = convert(there, target, source, analyte=analyte)
    assert back is not None
    assert math.isclose(back, value, rel_tol=1e-9, abs_tol=1e-6)


@given(value=finite_values, pair=st.sampled_from(CONVERTIBLE))
def test_convert_agrees_with_canonical(value: float, pair: tuple[str, str, str | None]) -> None:
    source, target, analyte = pair
    converted = convert(value, source, target, analyte=analyte)
    assert converted is not None
    left = canonical(value, source, analyte=analyte)
    right = canonical(converted, target, analyte=analyte)
    assert left is not None and right is not None and left[1] == right[1]
    assert math.isclose(left[0], right[0], rel_tol=1e-9, abs_tol=1e-6)


@given(
    prefix=st.sampled_from(["k", "m", "u", "n", "d", "c", ""]),
    atom=st.sampled_from(["g", "L", "mol", "m", "s"]),
    value=st.floats(min_value=1e-6, max_value=1e6),
)
def test_to_ucum_is_identity_on_valid_codes_and_case_insensitive(prefix: str, atom: str, value: float) -> None:
    code = prefix + atom
    assert to_ucum(code) == code or to_ucum(code) == code.replace("l", "L")
    canonical_code = canonical(value, code)
    shouted = to_ucum(code.upper())
    assert shouted is not None
    assert canonical(value, shouted) == pytest.approx(canonical_code)
