"""ipywidgets panels used by the notebooks.

Every panel follows one rule: a bad value shows an error line in the panel's own output
area, the panel keeps working, and nothing the student typed is lost.
"""

from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as widgets
from IPython.display import HTML, display


def error_html(message: str) -> HTML:
    return HTML(f'<div style="color:#b00020;font-weight:600">{message}</div>')


@contextmanager
def errors_shown_in(output: widgets.Output):
    """Run a panel callback; a ValueError (bad input) is shown in `output`, not raised."""
    try:
        yield
    except ValueError as err:  # the kit raises ValueError (or a subclass) for bad input
        # append_display_data works with or without a running kernel (tests drive panels too)
        output.append_display_data(error_html(f"{type(err).__name__}: {err}"))


# =============================================================================================
# Notebook 03 (benchmark): the benchmark panel (runs in a background thread, Stop keeps results)
# =============================================================================================

import threading  # noqa: E402  (imports kept in this section: easy merges)
from dataclasses import dataclass  # noqa: E402

from . import bench as _bench  # noqa: E402


@dataclass(frozen=True)
class BenchRequest:
    """What the panel was asked to run."""

    model: str
    prompt_len: int
    new_tokens: int
    repeats: int
    modes: tuple[str, ...]
    device: str


def _bench_model_names(current: str) -> list[str]:
    from .models import REGISTRY

    return list(dict.fromkeys([current, *REGISTRY]))


class BenchmarkPanel:
    """Model, sizes and modes; Run (with a tqdm bar) and Stop, which keeps what finished.

    The benchmark runs in a background thread, because a running cell would block the Stop
    button's click. A run estimated to take longer than `long_run_s` asks first: the Run
    button turns into "Run anyway". The last report is `panel.report`.
    """

    def __init__(self, lm, prompt_len: int | None = None, new_tokens: int | None = None,
                 repeats: int | None = None, modes=_bench.MODES,
                 long_run_s: float = _bench.LONG_RUN_S):
        import torch

        sizes = _bench.lesson_sizes()
        self.models = {lm.name: lm}
        self.long_run_s = long_run_s
        self.report: _bench.BenchReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._confirmed: BenchRequest | None = None
        self._rates: dict[tuple[str, str], _bench.Rates] = {}

        self.model = widgets.Combobox(value=lm.name, options=_bench_model_names(lm.name),
                                      description="model", ensure_option=False)
        self.prompt_len = widgets.BoundedIntText(prompt_len or sizes["prompt_len"], min=1,
                                                 max=1_000_000, description="prompt tokens")
        self.new_tokens = widgets.BoundedIntText(new_tokens or sizes["new_tokens"], min=1,
                                                 max=1_000_000, description="new tokens")
        self.repeats = widgets.BoundedIntText(repeats or sizes["repeats"], min=1, max=50,
                                              description="repeats")
        self.mode_boxes = {mode: widgets.Checkbox(value=mode in modes, description=mode,
                                                  indent=False)
                           for mode in _bench.MODES}
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
        self.device = widgets.Dropdown(options=devices, value="cpu", description="device")
        self.device.layout.display = None if len(devices) > 1 else "none"  # GPU column: optional
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.status = widgets.HTML()
        self.bar_area = widgets.Box()
        self.output = widgets.Output()
        self.run_button.on_click(self._on_run)
        self.stop_button.on_click(self._on_stop)
        self.widget = widgets.VBox([
            widgets.HBox([self.model, self.device]),
            widgets.HBox([self.prompt_len, self.new_tokens, self.repeats]),
            widgets.HBox(list(self.mode_boxes.values())),
            widgets.HBox([self.run_button, self.stop_button, self.status]),
            self.bar_area, self.output])

    def _ipython_display_(self):
        display(self.widget)

    # --- what to run --------------------------------------------------------------------------

    def request(self) -> BenchRequest:
        """The panel's values, checked; a ValueError names what is wrong."""
        modes = tuple(mode for mode, box in self.mode_boxes.items() if box.value)
        if not modes:
            raise ValueError(f"tick at least one mode: {', '.join(_bench.MODES)}")
        name = self.model.value.strip()
        if not name:
            raise ValueError(f"type a model name, e.g. {', '.join(self.model.options[:3])}")
        return BenchRequest(name, self.prompt_len.value, self.new_tokens.value,
                            self.repeats.value, modes, self.device.value)

    def loaded(self, name: str):
        """The model called `name`, loaded once and kept."""
        from .models import load

        if name not in self.models:
            self.models[name] = load(name, verbose=False)
        return self.models[name]

    def estimate_s(self, lm, request: BenchRequest) -> float:
        """Seconds the request would take here: cost model x rates measured once per model."""
        key = (lm.name, str(_bench.model_device(lm)))
        if key not in self._rates:
            self._rates[key] = _bench.measure_rates(lm, repeats=2)
        return _bench.estimate_run_s(_bench.spec_of(lm), request.prompt_len,
                                     request.new_tokens, request.repeats, request.modes,
                                     self._rates[key])

    # --- buttons ------------------------------------------------------------------------------

    def _on_run(self, _button=None) -> None:
        if self.running:
            return
        self.output.outputs = ()  # works with or without a running kernel
        with errors_shown_in(self.output):
            request = self.request()
            self.status.value = f"loading {request.model}..."
            lm = self.loaded(request.model)
            from .generate import check_length

            check_length(lm, request.prompt_len, request.new_tokens)
            self.status.value = "estimating..."
            seconds = self.estimate_s(lm, request)
            if seconds > self.long_run_s and self._confirmed != request:
                self._ask_first(request, seconds)
                return
            self.start(lm, request, seconds)
        if not self.running:
            self.status.value = ""

    def _ask_first(self, request: BenchRequest, seconds: float) -> None:
        self._confirmed = request
        duration = _bench.format_duration(seconds)
        self.run_button.description = f"Run anyway (~{duration})"
        self.run_button.button_style = "warning"
        self.status.value = ""
        self.output.append_display_data(error_html(
            f"This run would take about {duration} on this machine (estimated from the cost "
            f"model and the rates measured here). Click <b>Run anyway</b> to start it, or "
            f"lower the new tokens, repeats or modes."))

    def start(self, lm, request: BenchRequest, estimate_s: float | None = None) -> None:
        """Run the request in a background thread; the panel stays responsive."""
        self._confirmed = None
        self._stop.clear()
        self.run_button.description, self.run_button.button_style = "Run", "primary"
        self.run_button.disabled, self.stop_button.disabled = True, False
        expected = f" (about {_bench.format_duration(estimate_s)})" if estimate_s else ""
        self.status.value = f"running {request.model} on {request.device}{expected}"
        self._thread = threading.Thread(target=self._run, args=(lm, request), daemon=True)
        self._thread.start()

    def _on_stop(self, _button=None) -> None:
        self._stop.set()
        self.stop_button.disabled = True
        self.status.value = "stopping after the current run (finished runs are kept)..."

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> _bench.BenchReport | None:
        """Block until the background run ends (for scripts and tests); the report."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.report

    # --- the background run -------------------------------------------------------------------

    def _progress(self, **options):
        from tqdm.notebook import tqdm

        bar = tqdm(display=False, **options)
        self.bar_area.children = (bar.container,)
        return bar

    def _run(self, lm, request: BenchRequest) -> None:
        try:
            report = _bench.benchmark(lm, request.prompt_len, request.new_tokens,
                                      request.repeats, modes=request.modes,
                                      stop=self._stop.is_set, progress=self._progress,
                                      device=request.device)
        except Exception as err:  # any failure is shown in the panel, which keeps working
            self.output.append_display_data(error_html(f"{type(err).__name__}: {err}"))
            self.status.value = "failed"
        else:
            self.report = report
            self._show(report)
            self.status.value = "stopped: kept what finished" if report.stopped_early else "done"
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True

    def _show(self, report: _bench.BenchReport) -> None:
        from IPython.display import Image

        from . import plots

        self.output.append_stdout(_bench.report_summary(report) + "\n")
        if report.results:
            figure = plots.latency_plot(report)
            self.output.append_display_data(Image(data=plots.png_bytes(figure)))

