"""Benchmark: fhirtwin's structural validator vs fhir.resources (R4B) and fhirclient (R4).

All three validate the same pre-parsed Synthea NDJSON resources in the same process,
one core, in turn. JSON decoding is excluded (shared by all; ``--decoder orjson`` decodes
as the bulk import does). Times are process CPU seconds, the best of ``--repeat`` passes;
before each pass the validator forgets the primitive values it remembered as valid, so a
repeated pass costs what a first pass over new data costs. Prints a table::

    .venv/bin/python bench/bench_validation.py [--sample 6000] [--repeat 3] [--decoder json]
        [--bulk-stage-lines 20000]
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
sys.path.insert(0, str(REPO / "bench"))

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


def bulk_stage(lines: int) -> tuple[float, float]:
    """CPU µs per resource of ``ingest.r4_check.r4_validator`` over the first ``lines`` replicated
    Synthea lines, as the bulk import's stage profile runs it (orjson, collector paused, one pass):
    a first pass (shapes compiled on the way) and a second over freshly decoded copies."""
    import gc

    import orjson
    from synthea_replicate import replicas

    from ingest.r4_check import r4_validator

    encoded = [orjson.dumps(resource) for resource in replicas(lines)]
    passes = []
    gc.disable()
    try:
        for _ in range(2):
            resources = [orjson.loads(line) for line in encoded]
            start = time.process_time()
            for resource in resources:
                r4_validator(resource)
            passes.append((time.process_time() - start) / len(resources) * 1e6)
    finally:
        gc.enable()
    return passes[0], passes[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", type=int, default=6000, help="resources in the shared sample (0 = all)")
    parser.add_argument("--repeat", type=int, default=3, help="passes per tool; the best counts")
    parser.add_argument("--decoder", choices=("json", "orjson"), default="json", help="JSON decoder for the lines")
    parser.add_argument("--ndjson", type=Path, default=NDJSON_DIR, help="folder of Synthea NDJSON files")
    parser.add_argument("--bulk-stage-lines", type=int, default=0,
                        help="also time the bulk import's validation stage on this many replicated lines")
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
    if args.bulk_stage_lines:
        first, second = bulk_stage(args.bulk_stage_lines)
        print(f"bulk import validation stage (ingest.r4_check), {args.bulk_stage_lines} replicated lines: "
              f"{first:.2f} us/resource first pass, {second:.2f} second pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
