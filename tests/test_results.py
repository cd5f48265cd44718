"""Saving, loading and pooling results: JSON and CSV give back the same numbers."""

import json

import pytest
from bench_fakes import fake_report

from kvlab import bench, results


@pytest.fixture(scope="module")
def measured(tiny_gpt2):
    return bench.benchmark(tiny_gpt2, 8, 5, repeats=2, progress=False)


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_round_trip_gives_the_same_numbers(measured, tmp_path, suffix):
    path = tmp_path / f"run.{suffix}"
    if suffix == "json":
        measured.save_json(path)
    else:
        results.save_csv(measured, path)
    loaded = results.load_results(path)[0]
    assert loaded == measured  # every field, every step's time, the spec and machine info
    assert loaded.result("kvlab-cache")["step_ms"] == measured.result("kvlab-cache")["step_ms"]


def test_stopped_early_report_round_trips(tmp_path):
    report = fake_report(stopped_early=True)
    report.results = report.results[:2]
    json_path, csv_path = results.save_results(report, tmp_path / "runs", stem="stopped")
    assert results.load_json(json_path) == report
    assert results.load_csv(csv_path) == report


def test_json_has_machine_info_at_the_top(measured, tmp_path):
    path = tmp_path / "run.json"
    measured.save_json(path)
    data = json.loads(path.read_text())
    for key in ("cpu", "threads", "torch", "transformers", "device", "spec", "results"):
        assert key in data


def test_csv_is_one_row_per_mode_and_step(tmp_path):
    report = fake_report(prompt_len=8, new_tokens=20)
    path = tmp_path / "run.csv"
    results.save_csv(report, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 5 * 20
    header = lines[0].split(",")
    for column in ("cpu", "threads", "mode", "step", "context_length", "step_ms",
                   "mode_repeats"):
        assert column in header


def test_folder_loads_each_run_once_and_pools(tmp_path):
    first, second = fake_report(), fake_report(prompt_len=16)
    second.machine = dict(second.machine, cpu="Other CPU", threads=8)
    results.save_results(first, tmp_path, stem="a")  # a.json and a.csv: loaded once
    second.save_json(tmp_path / "b.json")
    results.save_csv(second, tmp_path / "c.csv")  # a CSV without its JSON is loaded too
    pooled = results.load_results(tmp_path)
    assert [r.prompt_len for r in pooled] == [8, 16, 16]
    table = results.pool_table(pooled).splitlines()
    assert len(table) == 4
    assert "Other CPU, 8 threads" in table[2]
    assert table[1].split()[-2:] == [f"{bench.total_speedup(first):.1f}x", "1.25"]


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no result file or folder at"):
        results.load_results(tmp_path / "missing.json")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="results are .json or .csv files"):
        results.load_results(tmp_path / "notes.txt")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a kvlab benchmark result: missing model"):
        results.load_results(tmp_path / "x.json")
