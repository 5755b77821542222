"""Generate ``data/structures.json`` (message structure group definitions) from hl7apy.

hl7apy carries the standard's per-version message structures but is far too slow for
the hot path, so it is used offline only: this script flattens its definitions into a
small JSON tree the grouping code reads. Run it when adding a structure:

    .venv/bin/python -m ingest.hl7v2.build_structures
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("data") / "structures.json"
# Two families: v2.3–2.6 messages are grouped with the 2.5.1 definitions, v2.7+ with 2.8
# (which adds PRT, ARV, …). Earlier releases keep structures later ones dropped
# (ORM_O01, ADT_A30), so each family falls back through the listed versions in order.
FAMILIES = {
    "2.5.1": ("v2_5_1", "v2_5", "v2_6", "v2_4", "v2_3_1"),
    "2.8": ("v2_8", "v2_7", "v2_6", "v2_5_1", "v2_5"),
}
STRUCTURES = [
    "ACK",
    "ADT_A01",
    "ADT_A02",
    "ADT_A03",
    "ADT_A05",
    "ADT_A06",
    "ADT_A09",
    "ADT_A12",
    "ADT_A15",
    "ADT_A16",
    "ADT_A17",
    "ADT_A20",
    "ADT_A21",
    "ADT_A24",
    "ADT_A30",
    "ADT_A37",
    "ADT_A38",
    "ADT_A39",
    "ADT_A43",
    "ADT_A45",
    "ADT_A50",
    "ADT_A52",
    "ADT_A54",
    "ADT_A60",
    "ADT_A61",
    "BAR_P01",
    "BAR_P02",
    "BAR_P12",
    "DFT_P03",
    "DFT_P11",
    "MDM_T01",
    "MDM_T02",
    "OMG_O19",
    "OML_O21",
    "OML_O33",
    "ORM_O01",
    "ORU_R01",
    "OUL_R22",
    "OUL_R23",
    "OUL_R24",
    "PPR_PC1",
    "RAS_O17",
    "RDE_O11",
    "RDS_O13",
    "REF_I12",
    "RSP_K21",
    "SIU_S12",
    "VXU_V04",
]


def _node(name: str, spec: Any, card: tuple[int, int], kind: str) -> list[Any]:
    """``[name, min, max]`` for a segment, ``[name, min, max, children]`` for a group."""
    if kind == "SEG":
        return [name, card[0], card[1]]
    children = [_node(c[0], c[1], c[2], c[3]) for c in spec[1]]
    return [name.split("_", 2)[-1] if name.count("_") >= 2 else name, card[0], card[1], children]


def build(versions: tuple[str, ...]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    modules = [importlib.import_module(f"hl7apy.{v}.messages") for v in versions]
    groups = [importlib.import_module(f"hl7apy.{v}.groups") for v in versions]
    for structure in STRUCTURES:
        for mod, grp in zip(modules, groups, strict=True):
            spec = mod.MESSAGES.get(structure)
            if spec is None:
                continue
            children = []
            for child in spec[1]:
                name, sub, card, kind = child
                if kind == "GRP" and sub is None:
                    sub = grp.GROUPS[name]
                children.append(_node(name, sub, card, kind))
            out[structure] = children
            break
    return out


def main() -> None:
    OUT.parent.mkdir(exist_ok=True)
    data = {family: build(versions) for family, versions in FAMILIES.items()}
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
