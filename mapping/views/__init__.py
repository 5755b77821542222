"""ViewDefinitions shipped with fhirtwin: the features the twins read (see docs/views.md)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VIEWS_DIR = Path(__file__).parent


@cache
def _load(name: str) -> str:
    return (VIEWS_DIR / f"{name}.json").read_text()


def view_names() -> list[str]:
    return sorted(p.stem for p in VIEWS_DIR.glob("*.json"))


def load_view(name: str) -> dict[str, Any]:
    """A fresh copy of the shipped ViewDefinition ``name`` (e.g. ``glucose_readings``)."""
    if name not in view_names():
        raise KeyError(f"no shipped view {name!r}; known: {view_names()}")
    return json.loads(_load(name))
