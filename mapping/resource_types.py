"""The FHIR R4 (4.0.1) resource type names, from the specification's StructureDefinitions."""

from __future__ import annotations

import json
from pathlib import Path

R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    json.loads((Path(__file__).with_name("data") / "r4_resource_types.json").read_text())
)
