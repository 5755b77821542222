"""``fhirtwin twin fit|simulate|validate|list``: the twins from the command line."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from fhirtwin.settings import Settings
from store.store import Store
from twin.inputs import MissingData, glucose_inputs, latest_time, latest_vancomycin_time
from twin.scenario import ScenarioError, SimulationRequest, parse_request
from twin.service import TwinRegistry, UnknownModel, publish, result_summary, simulate, simulation_bundle
from twin.validation_report import validate_glucose, validate_vancomycin
from twin.vocab import UCUM

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(min|m|h|d)\s*$")


def _minutes(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"duration {text!r}: expected e.g. 90min, 2h, 3d")
    return float(m.group(1)) * {"min": 1, "m": 1, "h": 60, "d": 1440}[m.group(2)]


def _origin(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--origin {text!r}: expected an ISO 8601 date-time, e.g. 2026-03-02T14:00:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def default_origin(store: Store, patient_id: str, model: str) -> datetime:
    """The CLI's origin when neither ``--origin`` nor the scenario file gives one: the patient's latest
    relevant data (glucose: the latest reading; vancomycin: the latest dose, level or covariate), as published
    forecasts use; the wall clock only when there is none (``$simulate`` over HTTP defaults to now)."""
    now = datetime.now(UTC)
    latest = (latest_time(store, "glucose_readings", "effective_time", patient_id, now) if model == "glucose"
              else latest_vancomycin_time(store, patient_id, now))
    return latest or now


def _file_value(body: dict, name: str) -> dict | None:
    return next((p for p in body.get("parameter") or [] if isinstance(p, dict) and p.get("name") == name), None)


def _request(store: Store, args: argparse.Namespace) -> SimulationRequest:
    """The flags and the scenario file as one ``$simulate`` Parameters, read by the same parser as HTTP.

    The file's ``model``, ``origin`` and ``horizon`` count; a flag given as well must say the same.
    """
    body: dict = {"resourceType": "Parameters", "parameter": []}
    if args.scenario:
        try:
            body = orjson.loads(args.scenario.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"--scenario {args.scenario}: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("parameter", []), list):
            raise ValueError(f"--scenario {args.scenario}: expected a Parameters resource")
    flag_origin = _origin(args.origin)
    flag_horizon = _minutes(args.horizon) if args.horizon else None
    given = {name: _file_value(body, name) is not None for name in ("model", "origin", "horizon")}
    if not given["model"]:
        body.setdefault("parameter", []).insert(0, {"name": "model", "valueString": args.model})
    if flag_horizon is not None and not given["horizon"]:
        body.setdefault("parameter", []).append({"name": "horizon", "valueQuantity": {
            "value": flag_horizon, "unit": "min", "system": UCUM, "code": "min"}})
    fallback = flag_origin or (None if given["origin"] else default_origin(store, args.patient, args.model))
    req = parse_request(body, now=fallback)
    where = f"--scenario {args.scenario}"
    if req.model != args.model:
        raise ValueError(f"{where} is for model {req.model!r} but --model is {args.model!r}")
    if given["origin"] and flag_origin is not None and req.origin != flag_origin:
        raise ValueError(f"{where} has origin {req.origin.isoformat()} but --origin is {flag_origin.isoformat()}")
    if given["horizon"] and flag_horizon is not None and req.horizon_min != flag_horizon:
        raise ValueError(f"{where} has horizon {req.horizon_min:g} min but --horizon is {args.horizon}")
    return req


def _print_predictions(console: Console, bundle: dict) -> None:
    table = Table(title="predictions (median, 80% and 95% intervals)")
    for col in ("time", "value", "80%", "95%"):
        table.add_column(col)
    for entry in bundle["entry"][1:]:
        r = entry["resource"]
        comps = {c["code"]["text"][:2]: c["valueRange"] for c in r.get("component", [])}
        rng = {k: f"{v['low']['value']:.1f}-{v['high']['value']:.1f}" for k, v in comps.items()}
        table.add_row(r["effectiveDateTime"][:16], f"{r['valueQuantity']['value']:.1f} {r['valueQuantity']['unit']}",
                      rng.get("80", ""), rng.get("95", ""))
    console.print(table)


def run_twin_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Dispatch ``fhirtwin twin ACTION``; returns the exit code."""
    with settings.open_store() as store:
        try:
            if args.twin_command == "list":
                for row in TwinRegistry.rows(store):
                    state = "stale" if row["stale"] else "fresh"
                    console.print(f"{row['patient_id']} {row['model']} {state} fitted {row['fitted_at']:%Y-%m-%d %H:%M} "
                                  f"data {row['fingerprint']}" + (f" error: {row['error']}" if row["error"] else ""))
                return 0
            if args.twin_command == "fit":
                written = publish(store, args.patient, args.model, _origin(args.origin))
                kinds: dict[str, int] = {}
                for w in written:
                    kinds[w.resource_type] = kinds.get(w.resource_type, 0) + 1
                console.print(f"published {args.model} twin of Patient/{args.patient}: "
                              + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
                plan = next((w for w in written if w.resource_type == "CarePlan"), None)
                if plan:
                    console.print((store.read("CarePlan", plan.id) or {}).get("description", ""))
                return 0
            if args.twin_command == "simulate":
                result = simulate(store, args.patient, _request(store, args))
                bundle = simulation_bundle(result)
                console.print_json(orjson.dumps(result_summary(result)).decode())
                _print_predictions(console, bundle)
                if args.out:
                    args.out.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
                    console.print(f"Bundle written to {args.out}")
                return 0
            return _validate(store, args, console)
        except (MissingData, UnknownModel, ScenarioError, ValueError, LookupError) as exc:
            console.print(f"[red]{args.twin_command} failed:[/] {exc}", highlight=False)
            return 2


def _validate(store: Store, args: argparse.Namespace, console: Console) -> int:
    out: Path = args.out
    if args.model == "vancomycin":
        report = validate_vancomycin(n_patients=args.virtual, out_dir=out)
    else:
        if not args.patient:
            raise ValueError("--patient is required for the glucose validation")
        latest = latest_time(store, "glucose_readings", "effective_time", args.patient, datetime.now(UTC))
        if latest is None:
            raise MissingData(f"Patient/{args.patient} has no glucose readings")
        data, _start, used, _measure = glucose_inputs(store, args.patient, latest + timedelta(minutes=1))
        report = validate_glucose(data, args.split_days * 1440.0, out_dir=out, fingerprint=used.fingerprint)
    console.print(report.markdown_table())
    console.print(f"report written to {out}")
    return 0
