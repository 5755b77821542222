"""Benchmark: fhirtwin's structural validator vs fhir.resources (R4B) and fhirclient (R4).

All three validate the same pre-parsed Synthea NDJSON resources in the same process,
one core, in turn. JSON decoding is excluded (shared by all; ``--decoder orjson`` decodes
as the bulk import does). Times are process CPU seconds, the best of ``--repeat`` passes;
before each pass the validator forgets the primitive values it remembered as valid, so a
repeated pass costs what a first pass over new data costs. Prints a table::

    .venv/bin/python bench/bench_validation.py [--sample 6000] [--repeat 3] [--decoder json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mapping.validation import validate_resource, validator  # noqa: E402

NDJSON_DIR = REPO / ".." / "shared" / "data" / "synthea" / "ndjson"
# Trees from before the validator remembered good values have nothing to forget.
forget_values: Callable[[], None] = getattr(validator, "forget_remembered_values", lambda: None)


def load_sample(sample: int, ndjson_dir: Path, decode: Callable[[str], Any]) -> list[dict[str, Any]]:
    """Every k-th line over all files, so the mix of types matches the whole export."""
    lines: list[str] = []
    for path in sorted(ndjson_dir.glob("*.ndjson")):
        lines.extend(path.read_text().splitlines())
    step = max(1, len(lines) // sample) if sample else 1
    return [decode(line) for line in lines[::step]]


def fhirtwin_validator() -> Callable[[dict[str, Any]], bool]:
    return lambda resource: not validate_resource(resource)


def fhir_resources_validator() -> Callable[[dict[str, Any]], bool]:
    from fhir.resources.R4B import get_fhir_model_class

    def check(resource: dict[str, Any]) -> bool:
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except Exception:  # noqa: BLE001 - any rejection counts
            return False
        return True

    return check


def fhirclient_validator() -> Callable[[dict[str, Any]], bool]:
    from fhirclient.models.fhirelementfactory import FHIRElementFactory

    def check(resource: dict[str, Any]) -> bool:
        try:
            FHIRElementFactory.instantiate(resource["resourceType"], resource)
        except Exception:  # noqa: BLE001 - any rejection counts
            return False
        return True

    return check


def measure(check: Callable[[dict[str, Any]], bool], resources: list[dict[str, Any]],
            repeat: int) -> tuple[float, int]:
    """Best CPU time over ``repeat`` passes, and the number of resources rejected."""
    best = float("inf")
    rejected = 0
    for _ in range(repeat):
        forget_values()
        start = time.process_time()
        rejected = sum(1 for resource in resources if not check(resource))
        best = min(best, time.process_time() - start)
    return best, rejected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", type=int, default=6000, help="resources in the shared sample (0 = all)")
    parser.add_argument("--repeat", type=int, default=3, help="passes per tool; the best counts")
    parser.add_argument("--decoder", choices=("json", "orjson"), default="json", help="JSON decoder for the lines")
    parser.add_argument("--ndjson", type=Path, default=NDJSON_DIR, help="folder of Synthea NDJSON files")
    args = parser.parse_args()
    decode = json.loads if args.decoder == "json" else __import__("orjson").loads
    resources = load_sample(args.sample, args.ndjson, decode)
    everything = load_sample(0, args.ndjson, decode)
    unknown_root_key = [{**resource, "zz": 1} for resource in everything]
    bad_late_code = copy.deepcopy(everything)  # found late: meta comes last in Synthea resources
    for resource in bad_late_code:
        resource["meta"]["tag"][0]["code"] = "bad code "
    tools = [
        ("fhirtwin mapping.validation (all lines)", fhirtwin_validator(), everything),
        ("fhirtwin, all lines with unknown root key", fhirtwin_validator(), unknown_root_key),
        ("fhirtwin, all lines with bad meta.tag code", fhirtwin_validator(), bad_late_code),
        ("fhirtwin mapping.validation", fhirtwin_validator(), resources),
        ("fhir.resources 8 R4B (pydantic 2)", fhir_resources_validator(), resources),
        ("fhirclient 4 R4 models", fhirclient_validator(), resources),
    ]
    print(f"python {platform.python_version()}, {len(resources)} resources in the shared sample "
          f"({len(everything)} lines in total, {args.decoder}), best of {args.repeat}, CPU time, code in {REPO}")
    print(f"{'validator':42} {'resources':>9} {'cpu s':>8} {'resources/s':>12} {'us/resource':>11} {'rejected':>8}")
    for name, check, batch in tools:
        check(batch[0])  # import/compile caches outside the timing
        seconds, rejected = measure(check, batch, args.repeat)
        print(f"{name:42} {len(batch):9d} {seconds:8.3f} {len(batch) / seconds:12,.0f} "
              f"{seconds / len(batch) * 1e6:11.2f} {rejected:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
