"""Load the compiled mapping tables (``data/*.json``) once per process."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


@cache
def _load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


def segment_maps() -> dict[str, list[dict[str, Any]]]:
    """``PID[Patient]`` → rules (field, target steps, datatype map, vocabulary, condition)."""
    return _load("segments")


def datatype_maps() -> dict[str, list[dict[str, Any]]]:
    """``CWE[CodeableConcept]`` → rules keyed by component."""
    return _load("datatypes")


def primitive_components() -> dict[str, int]:
    """Built-in conversions of a component other than the first (``MSG[code]`` → 2: the trigger event)."""
    return _load("primitive_components")


def vocabularies() -> dict[str, dict[str, list[str]]]:
    """ConceptMap name → v2 code → ``[fhir code, display, system]``."""
    return _load("vocab")


def message_maps() -> dict[str, list[dict[str, Any]]]:
    """Message structure → rows (segment, group path, target resource, segment map, references)."""
    return _load("messages")


def structure_groups() -> dict[str, dict[str, list[str]]]:
    """Version family (``2.5.1``, ``2.8``) → message structure → its group names."""
    return _load("structure_groups")


@cache
def required_children() -> tuple[dict[str, list[str]], frozenset[str]]:
    """Resource type or backbone element path → children FHIR requires, and every proper
    prefix of a backbone path (the elements ``prune`` has to descend into)."""
    req = _load("required")
    prefixes = {p.rsplit(".", i)[0] for p in req for i in range(1, p.count(".") + 1)}
    return req, frozenset(prefixes)


def config() -> dict[str, Any]:
    """Hand-kept settings: emitted types, id recipes, patient reference paths, defaults, aliases."""
    return _load("config")
