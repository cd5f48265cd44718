"""Saving, loading and pooling benchmark results, so a class can compare machines.

JSON keeps everything a `BenchReport` holds; CSV is one row per mode and step (for
spreadsheets), with the run's facts and each mode's summary repeated on every row. Both load
back into a `BenchReport` with the same numbers.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict
from glob import glob
from pathlib import Path

from .bench import FLOOR, BenchReport, ModelSpec, floor_ratio, total_speedup

_REPORT_FIELDS = ("model", "dtype", "prompt_len", "new_tokens", "repeats", "stopped_early")
_INT_FIELDS = {"prompt_len", "new_tokens", "repeats", "threads"}
_SUMMARY_PREFIX = "mode_"  # a mode's summary column named like a run column (repeats)
_STEP_COLUMNS = ("mode", "step", "context_length", "step_ms", "step_ms_min", "new_id")


def report_from_json(data: dict) -> BenchReport:
    """A BenchReport from the dict `to_json` made (the inverse of `to_json`)."""
    missing = [key for key in ("model", "prompt_len", "new_tokens", "results") if key not in data]
    if missing:
        raise ValueError(f"not a kvlab benchmark result: missing {', '.join(missing)}")
    top = {*_REPORT_FIELDS, "results", "spec"}
    machine = {key: value for key, value in data.items() if key not in top}
    spec = ModelSpec(**data["spec"]) if data.get("spec") else None
    return BenchReport(data["model"], data.get("dtype", "float32"), data["prompt_len"],
                       data["new_tokens"], data.get("repeats", 1), machine, data["results"],
                       bool(data.get("stopped_early", False)), spec)


def load_json(path) -> BenchReport:
    with open(path) as f:
        return report_from_json(json.load(f))


def save_csv(report: BenchReport, path) -> None:
    """One row per mode and step; the run's facts and each mode's summary repeat on every row."""
    header = {**{key: getattr(report, key) for key in _REPORT_FIELDS}, **report.machine}
    if report.spec is not None:
        header.update({f"spec_{key}": value for key, value in asdict(report.spec).items()})
    summary_keys = list(dict.fromkeys(key for entry in report.results for key in entry
                                      if key not in ("mode", "step_ms", "step_ms_min",
                                                     "new_ids")))
    columns = [_SUMMARY_PREFIX + key if key in header else key for key in summary_keys]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, *_STEP_COLUMNS, *columns])
        for entry in report.results:
            ids = entry.get("new_ids") or []
            fastest = entry.get("step_ms_min") or []
            for step, ms in enumerate(entry["step_ms"]):
                row = [entry["mode"], step, report.prompt_len + step, repr(ms),
                       repr(fastest[step]) if step < len(fastest) else "",
                       ids[step] if step < len(ids) else ""]
                summary = [_csv_cell(entry.get(key, "")) for key in summary_keys]
                writer.writerow([*header.values(), *row, *summary])


def _csv_cell(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def load_csv(path) -> BenchReport:
    """A BenchReport from a CSV written by `save_csv` (the same numbers)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"mode", "step_ms", "model"} <= set(rows[0]):
        raise ValueError(f"{path} is not a kvlab benchmark CSV (needs columns model, mode, "
                         f"step_ms)")
    run_keys = _header_keys(rows[0])
    data = {key: _header_value(key, rows[0][key]) for key in run_keys
            if not key.startswith("spec_")}
    spec = {key[5:]: _spec_value(rows[0][key]) for key in run_keys if key.startswith("spec_")}
    data["spec"] = spec or None
    results: dict[str, dict] = {}
    for row in rows:
        entry = results.setdefault(row["mode"], _summary_from_row(row))
        entry["step_ms"].append(float(row["step_ms"]))
        if row.get("step_ms_min"):
            entry.setdefault("step_ms_min", []).append(float(row["step_ms_min"]))
        if row["new_id"] != "":
            entry.setdefault("new_ids", []).append(int(row["new_id"]))
    data["results"] = list(results.values())
    return report_from_json(data)


def _header_keys(row: dict) -> list[str]:
    """The run's own columns: everything before the per-step columns."""
    keys = list(row)
    return keys[:keys.index("mode")]


def _header_value(key: str, text: str):
    if key in _INT_FIELDS:
        return int(text)
    if key == "stopped_early":
        return text == "True"
    return text


def _spec_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    return int(text) if text.lstrip("-").isdigit() else text


def _summary_from_row(row: dict) -> dict:
    keys = list(row)
    summary_keys = keys[keys.index("new_id") + 1:]
    entry = dict(mode=row["mode"])
    entry.update({key.removeprefix(_SUMMARY_PREFIX): _number(row[key])
                  for key in summary_keys if row[key] != ""})
    entry["step_ms"] = []
    return entry


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def result_stem(report: BenchReport) -> str:
    """A file name for a run: model, device, threads, and when it finished."""
    model = report.model.replace(":", "-").replace("/", "-")
    device = report.machine.get("device", "cpu").split(":")[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{model}_{device}_{report.machine.get('threads', 0)}threads_{stamp}"


def results_folder() -> Path:
    """Where runs are saved and pooled: env KVLAB_RESULTS, else `results` (next to the
    notebook). The tests point it elsewhere, so they never mix with a class's runs."""
    return Path(os.environ.get("KVLAB_RESULTS") or "results")


def save_results(report: BenchReport, folder=None, stem: str | None = None):
    """Save a run as JSON and CSV in `folder` (default `results_folder()`, created if
    needed); returns both paths."""
    folder = Path(folder) if folder is not None else results_folder()
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or result_stem(report)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    report.save_json(json_path)
    save_csv(report, csv_path)
    return json_path, csv_path


def load_results(*paths) -> list[BenchReport]:
    """Load runs from files (.json, .csv), folders (their .json files; a .csv only where
    no .json of the same name exists) and glob patterns, sorted by file name."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            jsons = sorted(path.glob("*.json"))
            stems = {p.stem for p in jsons}
            files += jsons + [p for p in sorted(path.glob("*.csv")) if p.stem not in stems]
        elif path.is_file():
            files.append(path)
        elif matches := sorted(glob(str(given))):
            files += [Path(m) for m in matches]
        else:
            raise ValueError(f"no result file or folder at {str(given)!r}")
    loaders = {".json": load_json, ".csv": load_csv}
    for path in files:
        if path.suffix not in loaders:
            raise ValueError(f"{path}: results are .json or .csv files, got {path.suffix!r}")
    return [loaders[path.suffix](path) for path in files]


def run_label(report: BenchReport) -> str:
    """A short label for one run in a pooled comparison: CPU (or GPU), threads, model."""
    machine = report.machine
    device = machine.get("device", "cpu")
    where = machine.get("gpu", "GPU") if device.startswith("cuda") else machine.get("cpu", "?")
    where = " ".join(where.replace("(R)", "").replace("(TM)", "").split()[:4])
    when = f", {machine['date']}" if machine.get("date") else ""
    return f"{where}, {machine.get('threads', '?')} threads, {report.model}{when}"


def pool_table(reports: list[BenchReport]) -> str:
    """One row per run: per-token medians of the cached and uncached loops, the floor, ratios."""
    lines = [f"{'run':<58}{'cached ms':>10}{'uncached':>10}{'floor ms':>10}{'speedup':>9}"
             f"{'x floor':>9}"]

    def cell(report, mode, key="per_token_ms_median"):
        return f"{report.result(mode)[key]:.2f}" if report.has(mode) else "-"

    for report in reports:
        both = report.has("kvlab-cache") and report.has("kvlab-nocache")
        speedup = f"{total_speedup(report):.1f}x" if both else "-"
        times_floor = (f"{floor_ratio(report):.2f}" if report.has("kvlab-cache")
                       and report.has(FLOOR) else "-")
        label = f"{run_label(report)} ({report.prompt_len}+{report.new_tokens})"
        lines.append(f"{label[:57]:<58}{cell(report, 'kvlab-cache'):>10}"
                     f"{cell(report, 'kvlab-nocache'):>10}{cell(report, FLOOR):>10}"
                     f"{speedup:>9}{times_floor:>9}")
    return "\n".join(lines)
