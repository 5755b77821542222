"""HL7 v2 throughput: fhirtwin parse / parse+map against python-hl7, hl7apy and bare str.split.

Every contender gets the same messages in the same run, single-threaded, and is timed
in CPU seconds of this process (messages/s per core). The messages are distinct
variants of two samples (ORU^R01 with 20 OBX, ADT^A01): control ids, patient ids,
names, timestamps and every numeric OBX value differ, so caches only help where a
real feed repeats itself (codes, units, facilities), not by replaying one message.

    .venv/bin/python bench/bench_hl7v2.py [--seconds 1.0] [--variants 200] [--phases]
    .venv/bin/python bench/bench_hl7v2.py --interleaved [--phases]  # ORU new against the floor, steadier
    .venv/bin/python bench/bench_hl7v2.py --map-new N      # for instruction counts (valgrind)
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import hl7
from hl7apy import parser as hl7apy_parser

from ingest.hl7v2 import group_message, parse_message, structure_of
from mapping.v2 import map_grouped

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7v2"
SAMPLES = {
    "ORU^R01 (20 OBX)": FIXTURES / "derived_ORU_R01_LRI_CBC_first20obx.hl7",
    "ADT^A01": FIXTURES / "v2tofhir_ADT_A01.hl7",
}


def variants(text: str, n: int, seed: int = 7, first: int = 0) -> list[str]:
    """``n`` copies of a message with ids, names, times and numeric values changed
    (control and patient ids numbered from ``first``)."""
    rng = random.Random(seed)
    base = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r") + "\r"
    out = []
    for i in range(first, first + n):
        segs = []
        for seg in base.split("\r"):
            if not seg:
                continue
            f = seg.split("|")
            if f[0] == "MSH":
                f[9] = f"{f[9]}-{i}"
                f[6] = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}0000"
            elif f[0] == "PID" and len(f) > 5:
                f[3] = re.sub(r"^[^\^~]+", f"P{i:06d}", f[3])
                f[5] = re.sub(r"^[^\^~]+", f"Name{rng.randint(0, 10**6)}", f[5])
            elif f[0] == "OBX" and len(f) > 5 and f[2] == "NM":
                f[5] = f"{rng.uniform(0.1, 500):.2f}"
                if len(f) > 14 and f[14]:
                    f[14] = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}"
            segs.append("|".join(f))
        out.append("\r".join(segs) + "\r")
    return out


def bare_split(text: str) -> list[list[list[str]]]:
    """The floor: segments, fields and components by str.split, nothing else."""
    return [[f.split("^") for f in seg.split("|")] for seg in text.split("\r") if seg]


def fhirtwin_parse(text: str) -> object:
    msg = parse_message(text)
    for seg in msg.segments:
        _ = seg.fields  # force the field split, as the others do
    return msg


def fhirtwin_parse_map(text: str) -> object:
    msg = parse_message(text)
    structure = structure_of(msg)
    return map_grouped(msg, group_message(msg, structure=structure), structure,
                       event=f"{msg.message_type}^{msg.trigger_event}")


PHASES = ("parse", "group by structure", "segment maps and links (write logs)", "shapes and deterministic ids",
          "finish resources", "Provenance")


def phase_times(msgs: list[str]) -> dict[str, float]:
    """CPU µs per message spent in each phase of parse + group + map (the steps of
    ``map_grouped``, timed one by one; the previous message's objects are freed in "parse")."""
    from mapping.v2 import messages as m2  # the mapper's phases are internal: timed here only

    spent = dict.fromkeys(PHASES, 0.0)
    clock = time.process_time
    for text in msgs:
        t0 = clock()
        msg = parse_message(text)
        t1 = clock()
        structure = structure_of(msg)
        root = group_message(msg, structure=structure)
        t2 = clock()
        family = root.family
        mapper = m2._Mapper(msg, root, structure, family, "+00:00")
        mapper.run(m2._rows_for(structure, family))  # type: ignore[arg-type]
        t3 = clock()
        mapper.assign_ids()
        t4 = clock()
        resources = mapper.resources()
        t5 = clock()
        m2._provenance(msg, resources, mapper.ctx.default_tz)
        t6 = clock()
        for name, a, b in zip(PHASES, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True):
            spent[name] += b - a
    return {name: v / len(msgs) * 1e6 for name, v in spent.items()}


def live_feed(text: str, n: int = 800) -> None:
    """Put the mapper in the state a feed of new messages like ``text`` leaves it in: everything
    forgotten, then ``n`` never-seen variants mapped (the memos decide which fields repeat). After
    the cycled variants, their fields look like repeating ones for thousands of new messages."""
    from ingest.hl7v2 import structure  # its grouping recipes are internal: cleared here only
    from mapping.v2 import forget

    forget()
    structure._RECIPES.clear()
    for variant in variants(text, n, seed=17, first=3 * 10**6):
        fhirtwin_parse_map(variant)


def python_hl7(text: str) -> object:
    return hl7.parse(text)


def hl7apy_parse(text: str) -> object:
    return hl7apy_parser.parse_message(text, find_groups=True)


def rate(fn: Callable[[str], object], msgs: list[str], seconds: float) -> float:
    """Messages per CPU second, cycling through the variants for at least ``seconds``."""
    fn(msgs[0])
    done = 0
    start = time.process_time()
    while True:
        for m in msgs:
            fn(m)
            done += 1
            if done % 16 == 0 and time.process_time() - start >= seconds:
                return done / (time.process_time() - start)


def print_phases(sets: dict[str, list[str]], fresh: dict[str, list[str]]) -> None:
    """Per-phase table: repeated variants (memos warm) and variants never mapped before."""
    columns = {}
    for name in sets:
        for _ in range(3):  # warm the memos on these variants, past the uses that make templates functions
            phase_times(sets[name])
        columns[f"{name}, repeated"] = phase_times(sets[name])
        live_feed(fresh[name][0])
        columns[f"{name}, new"] = phase_times(fresh[name][-len(sets[name]):])
    print(f"\n| CPU µs per message | {' | '.join(columns)} |")
    print("|---|" + "---:|" * len(columns))
    for phase in PHASES:
        print(f"| {phase} | {' | '.join(f'{c[phase]:.0f}' for c in columns.values())} |")
    print(f"| total | {' | '.join(f'{sum(c.values()):.0f}' for c in columns.values())} |")


NEW_POOL = 1_000


def interleaved(fresh: list[str], warm: list[str], phases: bool, chunk: int = 40) -> dict[str, float]:
    """Tenth percentile of the per-message CPU µs of the floor and of parse + group + map (or of
    each of its phases) over never-seen messages, in chunks timed one right after the other: a
    machine whose speed changes for minutes at a time (other work, clock steps) moves both alike.
    With them, ``median ratio``: the median over the chunks of the floor's time over the map's
    (every chunk counts, not only the fastest tenth)."""
    for text in warm:
        fhirtwin_parse_map(text)
    spent: dict[str, list[float]] = {}
    clock = time.process_time
    for i in range(0, len(fresh) - chunk + 1, chunk):
        part = fresh[i:i + chunk]
        t0 = clock()
        for text in part:
            bare_split(text)
        t1 = clock()
        if phases:
            times = phase_times(part)
            times["total"] = sum(times.values())
        else:
            for text in part:
                fhirtwin_parse_map(text)
            times = {"total": (clock() - t1) / chunk * 1e6}
        times["floor"] = (t1 - t0) / chunk * 1e6
        for name, us in times.items():
            spent.setdefault(name, []).append(us)
    out = {name: sorted(us)[len(us) // 10] for name, us in spent.items()}
    out["median ratio"] = statistics.median(f / t for f, t in zip(spent["floor"], spent["total"], strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per contender and message")
    ap.add_argument("--variants", type=int, default=200)
    ap.add_argument("--phases", action="store_true", help="also print CPU µs per phase of parse + map")
    ap.add_argument("--interleaved", action="store_true",
                    help="only ORU^R01 every message new against the floor, in interleaved chunks "
                         "(with --phases: each phase timed)")
    ap.add_argument("--map-new", type=int, metavar="N",
                    help=f"only map the first N (at most {NEW_POOL:,}) of a pool of never-seen ORU^R01 variants "
                         "after a warm-up, print nothing (for instruction counts: run with N and with 0, subtract)")
    args = ap.parse_args()
    oru = SAMPLES["ORU^R01 (20 OBX)"].read_text()
    if args.map_new is not None:
        warm = variants(oru, 200) + variants(oru, 300, seed=11, first=10**6)
        pool = variants(oru, NEW_POOL, seed=13, first=2 * 10**6)  # made whatever N: the runs differ by the mapping only
        for text in warm + pool[:args.map_new]:
            fhirtwin_parse_map(text)
        return
    if args.interleaved:
        warm = variants(oru, 300) + variants(oru, 500, seed=11, first=10**6)
        us = interleaved(variants(oru, 4_000, seed=13, first=2 * 10**6), warm, args.phases)
        print(f"ORU^R01 every message new, chunks of 40 after the floor (tenth percentile): floor {us['floor']:.0f} µs, "
              f"parse + group + map {us['total']:.0f} µs, {us['floor'] / us['total']:.3f} × floor, "
              f"{1e6 / us['total']:,.0f}/s; median of the chunks' ratios {us['median ratio']:.3f} × floor")
        if args.phases:
            print(" | ".join(f"{phase} {us[phase]:.0f}" for phase in PHASES))
        return
    contenders: list[tuple[str, Callable[[str], object]]] = [
        ("bare str.split (floor)", bare_split),
        ("fhirtwin parse", fhirtwin_parse),
        ("fhirtwin parse + group + map to FHIR", fhirtwin_parse_map),
        ("python-hl7 parse", python_hl7),
        ("hl7apy parse", hl7apy_parse),
    ]
    sets = {name: variants(path.read_text(), args.variants) for name, path in SAMPLES.items()}
    # A pool no timed run gets through: every message is new to the memos, as in a live feed
    # (only what really repeats between variants, such as codes, units and facilities, hits).
    pool = int(args.seconds * 5_000)
    fresh = {name: variants(path.read_text(), pool, seed=11, first=10**6) for name, path in SAMPLES.items()}
    first = fhirtwin_parse_map(sets["ORU^R01 (20 OBX)"][0])
    n_res = len(first.resources)  # type: ignore[attr-defined]
    print(f"| contender | {' | '.join(sets)} |")
    print("|---|" + "---:|" * len(sets))
    for label, fn in contenders:
        cells = [f"{rate(fn, msgs, args.seconds):,.0f}" for msgs in sets.values()]
        print(f"| {label} | {' | '.join(cells)} |")
        if fn is fhirtwin_parse_map:
            cells = []
            for msgs in fresh.values():
                live_feed(msgs[0])
                cells.append(f"{rate(fn, msgs, args.seconds):,.0f}")
            print(f"| {label}, every message new | {' | '.join(cells)} |")
    if args.phases:
        print_phases(sets, fresh)
    print(f"\nmessages/s per core (CPU time, {args.variants} distinct variants each, cycled; "
          f"'every message new': a pool of {pool:,} variants, none seen before); "
          f"ORU maps to {n_res} FHIR resources incl. Provenance")


if __name__ == "__main__":
    main()
