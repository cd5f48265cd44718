"""Wall time and peak memory of each notebook, run top to bottom in a fresh kernel.

For the README's Binder note and the instructor guide: every notebook under each model,
at the real lesson sizes (KVLAB_QUICK unset) and the test sizes (KVLAB_QUICK=1). Each run
executes a temporary copy (the repository's notebooks are not touched) with nbclient and
reads the kernel process's peak resident memory (VmHWM in /proc; elsewhere, psutil
sampled every 0.2 s). Prints a Markdown table, one row as each run ends.

    python benchmarks/notebook_resources.py                      # everything (slow)
    python benchmarks/notebook_resources.py --quick on --models random:distilgpt2

Time is from the first cell to the last, kernel start-up excluded. Timings on a shared
machine are noisy; memory is steadier.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO = Path(__file__).resolve().parents[1]
MODELS = ["smollm2-135m", "random:distilgpt2"]
BINDER_BYTES = 2 * 1024**3
NEAR_BINDER = 0.75  # flag a notebook whose kernel alone takes this share of Binder's memory


@dataclass
class Run:
    notebook: str
    model: str
    quick: bool
    seconds: float
    peak_bytes: int
    error: str = ""


class PeakMemory:
    """Peak resident memory of one process: the kernel's own high-water mark where Linux
    keeps one, else the largest of samples taken every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.process = psutil.Process(pid)
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sampled = max(self.sampled, self.process.memory_info().rss)
            except psutil.Error:
                return

    def now(self) -> str:
        """Current and peak-so-far resident memory, for the progress lines."""
        rss = self.process.memory_info().rss
        return f"RSS {mib(rss)} MiB, peak so far {mib(max(self.sampled, rss))} MiB"

    def peak(self) -> int:
        self._stop.set()
        self._thread.join()
        status = Path(f"/proc/{self.process.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.sampled


def kernel_env(model: str, quick: bool) -> dict[str, str]:
    env = {**os.environ, "KVLAB_MODEL": model, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                      os.environ.get("PYTHONPATH")]))}
    env.pop("KVLAB_QUICK", None)
    if quick:
        env["KVLAB_QUICK"] = "1"
    return env


def run_notebook(path: Path, model: str, quick: bool, timeout_s: float) -> Run:
    """Execute a copy of `path` in a fresh kernel; time it and read the kernel's peak."""
    with tempfile.TemporaryDirectory(prefix="kvlab-nb-") as folder:
        copy = Path(shutil.copy(path, folder))
        notebook = nbformat.read(copy, as_version=4)
        client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": folder}})
        error = ""
        with client.setup_kernel(env=kernel_env(model, quick)):
            memory = PeakMemory(client.km.provisioner.pid)
            start = time.perf_counter()
            try:
                for index, cell in enumerate(notebook.cells):
                    client.execute_cell(cell, index)
                    print(f"  {path.name} cell {index} done: {memory.now()}", file=sys.stderr,
                          flush=True)
            except CellExecutionError as err:
                error = str(err).strip().splitlines()[-1][:120]
            except CellTimeoutError:
                error = f"a cell ran past --timeout {timeout_s:.0f} s"
            seconds = time.perf_counter() - start
            peak = memory.peak()
    return Run(path.name, model, quick, seconds, peak, error)


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 1024**2:,.0f}"


HEADER = ("| notebook | model | KVLAB_QUICK | run all (s) | kernel peak RSS (MiB) | note |\n"
          "| --- | --- | --- | ---: | ---: | --- |")


def row(run: Run) -> str:
    notes = []
    if run.error:
        notes.append(f"FAILED: {run.error}")
    if run.peak_bytes > NEAR_BINDER * BINDER_BYTES:
        notes.append(f"near Binder's 2 GB ({run.peak_bytes / BINDER_BYTES:.0%})")
    return (f"| {run.notebook} | {run.model} | {'1' if run.quick else 'unset'} | "
            f"{run.seconds:.0f} | {mib(run.peak_bytes)} | {'; '.join(notes)} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--quick", choices=["off", "on", "both"], default="both",
                        help="KVLAB_QUICK unset (lesson sizes), set (test sizes), or both")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    quick_modes = {"off": [False], "on": [True], "both": [False, True]}[args.quick]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 1024**3:.0f} GiB memory\n", flush=True)
    print(HEADER, flush=True)
    failed = False
    for path in notebooks:
        for model in args.models:
            for quick in quick_modes:
                run = run_notebook(path, model, quick, args.timeout)
                failed |= bool(run.error)
                print(row(run), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
