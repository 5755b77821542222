"""``fhirtwin demo``: the whole pipeline on the shipped fixtures, then the API to try."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ingest.fhir_files import detect_format, iter_files, open_file
from ingest.hl7v2.timezone import DEFAULT_TIMEZONE
from ingest.pipeline import Ingestor, IngestSummary
from store.store import Store
from twin.service import publish
from twin.trend_twin import TrendResult, run_trend_twins

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "synthea"
TWIN_FIXTURES = {
    "glucose": Path(__file__).resolve().parents[1] / "fixtures" / "cgm" / "fhir",
    "vancomycin": Path(__file__).resolve().parents[1] / "fixtures" / "tdm" / "fhir",
}


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


_MESSAGE_START = re.compile(rb"(?:^|[\r\n])MSH")


def expected_records(path: Path) -> int:
    """Records to expect from one file, for the progress bar: NDJSON lines, HL7 v2 messages, else one
    (also for a file that cannot be read: the import refuses it with the reason)."""
    try:
        fmt = detect_format(path)
        if fmt == "ndjson":
            with open_file(path) as fh:
                return sum(1 for line in fh if line.strip())
        if fmt == "hl7":
            return max(1, len(_MESSAGE_START.findall(path.read_bytes())))
    except OSError:
        pass
    return 1


def ingest_with_progress(store: Store, paths: list[Path], console: Console, *,
                         hl7_timezone: str = DEFAULT_TIMEZONE) -> IngestSummary:
    """Ingest files showing a progress bar; large NDJSON files go through the parallel bulk path."""
    files = list(iter_files(paths))
    expected = {path: expected_records(path) for path in files}
    before: dict[Path, int] = {}
    total = 0
    for path in files:
        before[path] = total
        total += expected[path]
    with _progress(console) as progress:
        task = progress.add_task("ingest", total=total)

        def advance(path: Path, done: int) -> None:
            progress.update(task, completed=before[path] + min(done, expected[path]))

        summary = Ingestor(store, hl7_timezone=hl7_timezone).ingest_paths(paths, on_progress=advance)
        progress.update(task, completed=total)
    return summary


def summary_counts(summary: IngestSummary) -> str:
    """An ingest's counts in one line (the not mapped and skipped only when there are some)."""
    parts = [f"{summary.accepted} accepted", f"{summary.unchanged} unchanged"]
    if summary.not_mapped:
        parts.append(f"{summary.not_mapped} HL7 v2 messages not mapped (kept raw; 'fhirtwin replay' maps them "
                     "once a map exists)")
    parts.append(f"{summary.rejected} rejected")
    if summary.skipped:
        parts.append(f"{summary.skipped} files of unknown type skipped")
    return ", ".join(parts)


def run_pipeline(store: Store, data: Path, console: Console, as_of: datetime | None = None) -> list[TrendResult]:
    """Stages 1–4: ingest, store, fit twins, publish. Returns the published predictions."""
    summary = ingest_with_progress(store, [data], console)
    console.print(f"[bold]ingested[/] {summary.files} files: {summary_counts(summary)}")
    for err in summary.errors[:10]:
        console.print(f"  [red]rejected[/] {err}")
    patients = store.count("Patient")
    with _progress(console) as progress:
        task = progress.add_task("fit twins", total=patients * 2)
        results = run_trend_twins(store, as_of or datetime.now(UTC), on_patient=lambda _: progress.advance(task))
        progress.update(task, completed=patients * 2)
    return results


def print_results(console: Console, store: Store, results: list[TrendResult], host: str, port: int) -> None:
    """What was stored and published, and where to look."""
    counts = Table(title="store")
    counts.add_column("resource type")
    counts.add_column("current", justify="right")
    for rtype, n in store.counts_by_type().items():
        counts.add_row(rtype, str(n))
    console.print(counts)
    table = Table(title=f"twin predictions ({len(results)} published, first 8)")
    for col in ("patient", "measure", "points", "last", "slope/yr", "predicted at", "mean", "80% interval"):
        table.add_column(col)
    for r in results[:8]:
        lo, hi = r.predicted.intervals[80]
        table.add_row(
            r.patient_id[:8], r.measure, str(r.n_points), f"{r.last_value:.1f}", f"{r.slope_per_year:+.2f}",
            r.predicted.time.date().isoformat(), f"{r.predicted.mean:.1f} {r.unit}", f"{lo:.1f}–{hi:.1f}",
        )
    console.print(table)
    base = f"http://{host}:{port}/fhir"
    if results:
        first = results[0]
        console.print("[bold]try:[/]")
        console.print(f"  {base}/metadata")
        console.print(f"  {base}/Observation/{first.observation_id}")
        console.print(f"  {base}/Observation?subject=Patient/{first.patient_id}&code=http://loinc.org|4548-4")
        console.print(f"  {base}/Provenance?_count=5")
    console.print(f"  {base}/CarePlan?_tag=http://fhirtwin.org/fhir/CodeSystem/tags|simulated")
    console.print(f"  {base}/Observation?patient=tdm-001&code=http://loinc.org|4092-3,http://loinc.org|4090-7")
    console.print(f"  POST {base}/Patient/tdm-001/$simulate  (a Parameters body: see README, \"Simulate before treating\")")


def run_mechanistic_twins(store: Store, console: Console) -> list[tuple[str, str, str]]:
    """Ingest the CGM and TDM fixtures, then fit and publish a glucose or vancomycin twin per patient."""
    summary = ingest_with_progress(store, list(TWIN_FIXTURES.values()), console)
    console.print(f"[bold]ingested[/] twin fixtures: {summary.accepted} written, {summary.unchanged} unchanged")
    jobs = []
    for model, folder in TWIN_FIXTURES.items():
        ids = store.cursor().execute(
            "SELECT DISTINCT patient_id FROM resources WHERE resource_type = 'Patient' AND patient_id IN "
            f"(SELECT json ->> '$.id' FROM read_ndjson_objects('{folder}/*.ndjson*')) ORDER BY 1"
        ).fetchall()
        jobs += [(model, pid) for (pid,) in ids]
    plans = []
    with _progress(console) as progress:
        task = progress.add_task("fit mechanistic twins", total=len(jobs))
        for model, pid in jobs:
            written = publish(store, pid, model)
            plan = next(w for w in written if w.resource_type == "CarePlan")
            plans.append((pid, model, (store.read("CarePlan", plan.id) or {}).get("description", "")))
            progress.advance(task)
    table = Table(title="twin recommendations (CarePlan, intent proposal)")
    table.add_column("patient")
    table.add_column("model")
    table.add_column("recommendation")
    for pid, model, text in plans:
        table.add_row(pid, model, text)
    console.print(table)
    return plans
