"""The ``fhirtwin`` command line: the composition root wiring ingest, store, twins and the server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from store.store import Store

from fhirtwin.settings import (
    DEFAULT_CACHE_MB,
    DEFAULT_DB,
    DEFAULT_HL7_TIMEZONE,
    DEFAULT_HOST,
    DEFAULT_MLLP_ACK_AFTER,
    DEFAULT_MLLP_MAP_TIMEOUT_S,
    DEFAULT_MLLP_PORT,
    DEFAULT_PORT,
    MLLP_ACK_AFTER_CHOICES,
    Settings,
    env_choice,
    env_default,
    env_hl7_timezone,
    env_megabytes,
    env_port,
    env_seconds,
    hl7_timezone,
    megabytes,
    port,
    positive_seconds,
)

MODEL_CHOICES = ("glucose", "vancomycin", "vancomycin-goti-2018", "vancomycin-buelga-2005")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=env_default("DB", DEFAULT_DB), help="DuckDB file (env FHIRTWIN_DB)")
    p.add_argument("--cache-mb", type=megabytes, metavar="MB", default=env_megabytes("CACHE_MB", DEFAULT_CACHE_MB),
                   help="memory for current versions kept for fast reads; beyond it the oldest are read from the "
                        "database (env FHIRTWIN_CACHE_MB; default %(default)s)")
    p.add_argument("--db-memory-mb", type=megabytes, metavar="MB", default=env_megabytes("DB_MEMORY_MB", None),
                   help="DuckDB's memory limit; its buffer of table blocks grows with the database up to it "
                        "(env FHIRTWIN_DB_MEMORY_MB; default: half of physical memory)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _missing_db(settings: Settings, console: Console) -> bool:
    """Whether the store a reading command names does not exist (said once, instead of creating an
    empty one, which a mistyped ``--db`` would otherwise do silently)."""
    if settings.db == ":memory:" or Path(settings.db).exists():
        return False
    console.print(f"[red]no such database:[/] {settings.db} (ingest into it first, or name another with --db "
                  "or FHIRTWIN_DB)", highlight=False)
    return True


def _add_net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=env_default("HOST", DEFAULT_HOST), help="bind address (env FHIRTWIN_HOST)")
    p.add_argument("--port", type=port, default=env_port("PORT", DEFAULT_PORT), help="HTTP port (env FHIRTWIN_PORT)")


VIEW_HELP = "a ViewDefinition JSON file, or the name of a shipped view (see 'fhirtwin view list')"
MLLP_ACK_AFTER_HELP = (
    "when an original-mode AA is sent (env FHIRTWIN_MLLP_ACK_AFTER; default %(default)s). "
    "processed: after the message is in the inbox and mapped into the store (readable through the API); "
    "mapping failures get AE with an ERR segment. commit: as soon as the message is parsed, checked and "
    "committed to the durable inbox; mapping follows in the background in order per patient, and a "
    "failure keeps the message in the dead letters (see 'fhirtwin replay') instead of an AE. Malformed "
    "messages get AR/AE with ERR under both; enhanced mode (MSH-15/16) is the same under both."
)


def _add_hl7_timezone(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hl7-timezone", type=hl7_timezone, metavar="ZONE",
        default=env_hl7_timezone("HL7_TIMEZONE", DEFAULT_HL7_TIMEZONE),
        help="zone of HL7 v2 times sent without a UTC offset (and no offset in MSH-7): UTC, +hh:mm or an IANA "
             "name such as America/Chicago, whose offset at the message's MSH-7 time applies "
             "(env FHIRTWIN_HL7_TIMEZONE; default %(default)s)",
    )


def _add_mllp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mllp-ack-after", choices=MLLP_ACK_AFTER_CHOICES,
        default=env_choice("MLLP_ACK_AFTER", DEFAULT_MLLP_ACK_AFTER, MLLP_ACK_AFTER_CHOICES),
        help=MLLP_ACK_AFTER_HELP,
    )
    p.add_argument(
        "--mllp-map-timeout", type=positive_seconds, metavar="SECONDS",
        default=env_seconds("MLLP_MAP_TIMEOUT", DEFAULT_MLLP_MAP_TIMEOUT_S),
        help="a batch whose mapping takes longer is mapped message by message, and a message whose mapping "
             "hangs is dead-lettered with AE (env FHIRTWIN_MLLP_MAP_TIMEOUT; default %(default)s)",
    )
    _add_hl7_timezone(p)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        db=getattr(args, "db", DEFAULT_DB),
        host=getattr(args, "host", DEFAULT_HOST),
        port=getattr(args, "port", DEFAULT_PORT),
        mllp_port=getattr(args, "mllp_port", DEFAULT_MLLP_PORT),
        mllp_ack_after=getattr(args, "mllp_ack_after", DEFAULT_MLLP_ACK_AFTER),
        mllp_map_timeout_s=getattr(args, "mllp_map_timeout", DEFAULT_MLLP_MAP_TIMEOUT_S),
        cache_mb=getattr(args, "cache_mb", DEFAULT_CACHE_MB),
        db_memory_mb=getattr(args, "db_memory_mb", None),
        hl7_timezone=getattr(args, "hl7_timezone", DEFAULT_HL7_TIMEZONE),
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="fhirtwin", description="FHIR-native platform for patient digital twins")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="ingest the shipped fixtures, fit and publish twins, serve the FHIR API")
    _add_db(demo)
    _add_net(demo)
    demo.add_argument("--no-serve", action="store_true", help="stop after publishing")
    demo.add_argument("--data", type=Path, default=None, help="folder to ingest instead of the shipped fixtures")

    serve = sub.add_parser("serve", help="serve the FHIR R4 API at /fhir")
    _add_db(serve)
    _add_net(serve)
    serve.add_argument(
        "--mllp-port", type=port, default=env_port("MLLP_PORT", DEFAULT_MLLP_PORT),
        help="MLLP listener port, 0 turns it off (env FHIRTWIN_MLLP_PORT)",
    )
    _add_mllp_options(serve)

    ingest = sub.add_parser(
        "ingest", help="ingest FHIR NDJSON (.ndjson, .ndjson.gz), JSON, Bundles, FHIR XML and HL7v2 files or folders"
    )
    _add_db(ingest)
    _add_hl7_timezone(ingest)
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    mllp = sub.add_parser("mllp", help="run the HL7v2 MLLP listener alone")
    _add_db(mllp)
    mllp.add_argument("--host", default=env_default("HOST", DEFAULT_HOST), help="bind address (env FHIRTWIN_HOST)")
    mllp.add_argument(
        "--mllp-port", type=port, default=env_port("MLLP_PORT", DEFAULT_MLLP_PORT), help="port (env FHIRTWIN_MLLP_PORT)"
    )
    _add_mllp_options(mllp)

    replay = sub.add_parser("replay", help="re-process dead letters (refused FHIR records and HL7v2 messages)")
    _add_db(replay)
    _add_hl7_timezone(replay)

    export = sub.add_parser("export", help="export current resources")
    _add_db(export)
    export.add_argument("--format", choices=("parquet", "ndjson"), default="parquet")
    export.add_argument("--out", type=Path, required=True, help="output folder")

    view = sub.add_parser("view", help="SQL-on-FHIR ViewDefinitions")
    view_sub = view.add_subparsers(dest="view_command", required=True, metavar="ACTION")
    view_run = view_sub.add_parser("run", help="run a ViewDefinition over the store")
    _add_db(view_run)
    view_run.add_argument("view", type=Path, metavar="VIEW", help=VIEW_HELP)
    view_run.add_argument("--format", choices=("csv", "json", "ndjson", "parquet"), default="csv")
    view_run.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")
    view_mat = view_sub.add_parser("materialize", help="keep a view as a table refreshed on every write")
    _add_db(view_mat)
    view_mat.add_argument("view", type=Path, metavar="VIEW", help=VIEW_HELP)
    view_mat.add_argument("--name", required=True, help="table name suffix (view_<name>)")
    view_sub.add_parser("list", help="the ViewDefinitions shipped with fhirtwin")
    twin = sub.add_parser("twin", help="patient twins: fit and publish, simulate a scenario, validate")
    twin_sub = twin.add_subparsers(dest="twin_command", required=True, metavar="ACTION")
    for action, text in (("fit", "fit a patient's twin and publish its forecast, plan and Provenance"),
                         ("simulate", "simulate a scenario for a patient (nothing is stored)")):
        p = twin_sub.add_parser(action, help=text)
        _add_db(p)
        p.add_argument("--patient", required=True, help="Patient id")
        p.add_argument("--model", required=True, choices=MODEL_CHOICES)
        p.add_argument("--origin", help="fit on data with clinical time up to this dateTime (default: the latest glucose "
                       "reading, or the latest vancomycin dose, level, weight or creatinine)")
        if action == "simulate":
            p.add_argument("--horizon", help="e.g. 120min, 2h, 72h (default 2h glucose, 72h drugs)")
            p.add_argument("--scenario", type=Path, help="a $simulate Parameters JSON file with scenario events; its model, origin and "
                                "horizon are used (a flag that contradicts them is an error)")
            p.add_argument("--out", type=Path, help="write the result Bundle (JSON) here")
    val = twin_sub.add_parser("validate", help="fit up to a split and score forecasts after it (report with plots)")
    _add_db(val)
    val.add_argument("--model", required=True, choices=("glucose", "vancomycin"))
    val.add_argument("--patient", help="Patient id (glucose: CGM in the store)")
    val.add_argument("--split-days", type=float, default=10.0, help="glucose: days of data to fit on")
    val.add_argument("--virtual", type=_positive_int, default=200, help="vancomycin: virtual TDM patients")
    val.add_argument("--out", type=Path, required=True, help="report folder")
    listing = twin_sub.add_parser("list", help="twins in the store and whether new data made them stale")
    _add_db(listing)
    return parser


def cmd_demo(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from fhirtwin.demo import FIXTURES, print_results, run_mechanistic_twins, run_pipeline
    from fhirtwin.serving import serve

    data = args.data or FIXTURES
    if not data.exists():
        console.print(f"[red]no such file or folder:[/] {data}", highlight=False)
        return 2
    console.print(f"[bold]fhirtwin demo[/]: data {data}, store {settings.db}")
    store = settings.open_store()
    try:
        results = run_pipeline(store, data, console)
        if args.data is None:
            run_mechanistic_twins(store, console)
        print_results(console, store, results, settings.host, settings.port)
        if args.no_serve:
            return 0
        console.print(f"serving on http://{settings.host}:{settings.port}/fhir (Ctrl-C to stop)")
        serve(store, settings.host, settings.port, mllp_port=0)
    finally:
        store.close()
    return 0


CLUSTER_AFTER_ROWS = 50_000


def _cluster_if_needed(store: Store, console: Console) -> None:
    """Re-sort the search index by patient when many rows arrived since the last time."""
    import duckdb

    tail = store.unclustered_rows()
    if tail >= CLUSTER_AFTER_ROWS:
        with console.status(f"clustering the search index by patient ({tail:,} new resources)"):
            try:
                store.optimize()
            except duckdb.Error as exc:  # the data is committed; only the faster layout is missing
                console.print(f"[yellow]clustering the search index stopped:[/] {str(exc).splitlines()[0]} "
                              "(searches stay correct; it is tried again at the next import or start; "
                              "a larger --db-memory-mb helps)", highlight=False)


def cmd_serve(settings: Settings, console: Console) -> int:
    from fhirtwin.serving import serve

    store = settings.open_store()
    _cluster_if_needed(store, console)
    mllp = (
        f", MLLP on {settings.host}:{settings.mllp_port} (AA after {settings.mllp_ack_after})"
        if settings.mllp_port else ""
    )
    console.print(f"serving {settings.db} on http://{settings.host}:{settings.port}/fhir{mllp} (Ctrl-C to stop)")
    try:
        serve(store, settings.host, settings.port, mllp_port=settings.mllp_port, mllp_ack_after=settings.mllp_ack_after,
              mllp_map_timeout_s=settings.mllp_map_timeout_s, hl7_timezone=settings.hl7_timezone)
    except OSError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        return 2
    finally:
        store.close()
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from fhirtwin.demo import ingest_with_progress, summary_counts

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        console.print(f"[red]no such file or folder:[/] {', '.join(missing)}")
        return 2
    with settings.open_store() as store:
        summary = ingest_with_progress(store, list(args.paths), console, hl7_timezone=settings.hl7_timezone)
        _cluster_if_needed(store, console)
    console.print(f"{summary.files} files: {summary_counts(summary)}")
    for rtype, n in sorted(summary.by_type.items()):
        console.print(f"  {rtype}: {n}")
    for note in summary.notes:
        console.print(f"[yellow]not mapped[/] {note}", highlight=False)
    for warning in summary.warnings:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    for err in summary.errors:
        console.print(f"[red]rejected[/] {err}", highlight=False)
    return 1 if summary.rejected else 0


def cmd_mllp(settings: Settings, console: Console) -> int:
    from ingest.hl7v2.listener import run_mllp_forever
    from ingest.hl7v2.processor import default_mapper

    with settings.open_store() as store:
        try:
            run_mllp_forever(store, settings.host, settings.mllp_port, ack_after=settings.mllp_ack_after,
                             map_timeout_s=settings.mllp_map_timeout_s, mapper=default_mapper(settings.hl7_timezone))
        except OSError as exc:
            console.print(f"[red]{exc}[/]", highlight=False)
            return 2
    return 0


def cmd_replay(settings: Settings, console: Console) -> int:
    from ingest.hl7v2.processor import default_mapper, replay_dead_letters
    from ingest.pipeline import Ingestor

    if _missing_db(settings, console):
        return 2
    with settings.open_store() as store:
        fhir = Ingestor(store, hl7_timezone=settings.hl7_timezone).replay_dead_letters()
        hl7 = replay_dead_letters(store, default_mapper(settings.hl7_timezone))
    console.print(f"Records from files: {fhir.accepted} now accepted, {fhir.unchanged} unchanged, "
                  f"{fhir.not_mapped} still not mapped, {fhir.rejected} still refused")
    console.print(
        f"HL7v2 messages: {hl7.attempted} replayed, {hl7.processed} processed, {hl7.not_mapped} not mapped, "
        f"{hl7.still_dead + hl7.unreadable} still failing"
    )
    for err in [*fhir.errors, *hl7.errors]:
        console.print(f"[red]still failing[/] {err}", highlight=False)
    return 1 if fhir.rejected or hl7.still_dead or hl7.unreadable else 0


def cmd_export(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from store.export import export_ndjson, export_parquet

    if _missing_db(settings, console):
        return 2
    with settings.open_store(read_only=True) as store:
        counts = (export_parquet if args.format == "parquet" else export_ndjson)(store, args.out)
    console.print(f"exported {sum(counts.values())} resources as {args.format} to {args.out}")
    for rtype, n in counts.items():
        console.print(f"  {rtype}: {n}")
    return 0


def _load_view(path: Path, console: Console) -> dict | None:
    """A ViewDefinition file, or else the shipped view of that name (``glucose_readings``)."""
    import orjson

    from mapping.views import load_view, view_names

    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        if str(path) in view_names():
            return load_view(str(path))
        console.print(f"[red]no such file or shipped view:[/] {path} (shipped: {', '.join(view_names())})",
                      highlight=False)
    except orjson.JSONDecodeError as exc:
        console.print(f"[red]{path}: invalid JSON:[/] {exc}")
    return None


def _list_views(console: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mapping.views import load_view, view_names

    table = Table(title="shipped ViewDefinitions (fhirtwin view run NAME)")
    for column in ("name", "resource", "description"):
        table.add_column(column)
    for name in view_names():
        view = load_view(name)
        table.add_row(name, view.get("resource", ""), escape(view.get("description", "")))  # UCUM has [brackets]
    console.print(table)
    return 0


def cmd_view(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from fhirtwin.view_output import write_rows
    from mapping.viewdef import ViewDefinitionError
    from store.views import MaterializedViews, run

    if args.view_command == "list":
        return _list_views(console)
    if _missing_db(settings, console):
        return 2
    view = _load_view(args.view, console)
    if view is None:
        return 2
    try:
        if args.view_command == "materialize":
            with settings.open_store() as store:
                rows = MaterializedViews(store).materialize(args.name, view)
            console.print(f"view_{args.name}: {rows} rows, refreshed on every write")
            return 0
        with settings.open_store(read_only=True) as store:
            compiled, rows = run(store, view)
    except ViewDefinitionError as exc:
        console.print(f"[red]{args.view}: invalid ViewDefinition:[/] {exc}", highlight=False)
        return 2
    except duckdb.Error as exc:  # the data broke a rule of the view (a single-valued column got several)
        console.print(f"[red]{args.view}: the view failed on the data:[/] {exc}", highlight=False)
        return 1
    write_rows(rows, [c.name for c in compiled.columns], args.format, args.out)
    if args.out:
        console.print(f"{len(rows)} rows written to {args.out}")
    return 0


def cmd_twin(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from fhirtwin.twin_commands import run_twin_command

    virtual_only = args.twin_command == "validate" and args.model == "vancomycin"  # virtual patients: no store
    if not virtual_only and _missing_db(settings, console):
        return 2
    return run_twin_command(settings, args, console)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fhirtwin`` console script."""
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    console = Console(soft_wrap=True)
    from store.store import StoreInUse

    try:
        return _run(args, settings, console)
    except StoreInUse as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        return 1


def _run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.command == "demo":
        return cmd_demo(settings, args, console)
    if args.command == "serve":
        return cmd_serve(settings, console)
    if args.command == "ingest":
        return cmd_ingest(settings, args, console)
    if args.command == "mllp":
        return cmd_mllp(settings, console)
    if args.command == "replay":
        return cmd_replay(settings, console)
    if args.command == "export":
        return cmd_export(settings, args, console)
    if args.command == "view":
        return cmd_view(settings, args, console)
    if args.command == "twin":
        return cmd_twin(settings, args, console)
    return 2


if __name__ == "__main__":
    sys.exit(main())
