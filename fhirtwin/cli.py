"""The ``fhirtwin`` command line: the composition root wiring ingest, store, twins and the server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from fhirtwin.settings import (
    DEFAULT_DB,
    DEFAULT_HOST,
    DEFAULT_MLLP_PORT,
    DEFAULT_PORT,
    Settings,
    env_default,
    env_int,
)


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=env_default("DB", DEFAULT_DB), help="DuckDB file (env FHIRTWIN_DB)")


def _add_net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=env_default("HOST", DEFAULT_HOST), help="bind address (env FHIRTWIN_HOST)")
    p.add_argument("--port", type=int, default=env_int("PORT", DEFAULT_PORT), help="HTTP port (env FHIRTWIN_PORT)")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        db=args.db,
        host=getattr(args, "host", DEFAULT_HOST),
        port=getattr(args, "port", DEFAULT_PORT),
        mllp_port=getattr(args, "mllp_port", DEFAULT_MLLP_PORT),
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
        "--mllp-port", type=int, default=env_int("MLLP_PORT", DEFAULT_MLLP_PORT),
        help="MLLP listener port, 0 turns it off (env FHIRTWIN_MLLP_PORT)",
    )

    ingest = sub.add_parser("ingest", help="ingest FHIR NDJSON/JSON/Bundle files or folders")
    _add_db(ingest)
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    return parser


def cmd_demo(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from fhirtwin.demo import FIXTURES, print_results, run_pipeline
    from fhirtwin.serving import serve
    from store.store import Store

    data = args.data or FIXTURES
    console.print(f"[bold]fhirtwin demo[/]: data {data}, store {settings.db}")
    store = Store(settings.db)
    try:
        results = run_pipeline(store, data, console)
        print_results(console, store, results, settings.host, settings.port)
        if args.no_serve:
            return 0
        console.print(f"serving on http://{settings.host}:{settings.port}/fhir (Ctrl-C to stop)")
        serve(store, settings.host, settings.port)
    finally:
        store.close()
    return 0


def cmd_serve(settings: Settings, console: Console) -> int:
    from fhirtwin.serving import serve
    from store.store import Store

    store = Store(settings.db)
    console.print(f"serving {settings.db} on http://{settings.host}:{settings.port}/fhir (Ctrl-C to stop)")
    try:
        serve(store, settings.host, settings.port)
    finally:
        store.close()
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from fhirtwin.demo import ingest_with_progress
    from store.store import Store

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        console.print(f"[red]no such file or folder:[/] {', '.join(missing)}")
        return 2
    with Store(settings.db) as store:
        summary = ingest_with_progress(store, list(args.paths), console)
    console.print(
        f"{summary.files} files: {summary.accepted} accepted, {summary.unchanged} unchanged, "
        f"{summary.rejected} rejected"
    )
    for rtype, n in sorted(summary.by_type.items()):
        console.print(f"  {rtype}: {n}")
    for err in summary.errors:
        console.print(f"[red]rejected[/] {err}", highlight=False)
    return 1 if summary.rejected else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fhirtwin`` console script."""
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    console = Console()
    if args.command == "demo":
        return cmd_demo(settings, args, console)
    if args.command == "serve":
        return cmd_serve(settings, console)
    if args.command == "ingest":
        return cmd_ingest(settings, args, console)
    return 2


if __name__ == "__main__":
    sys.exit(main())
