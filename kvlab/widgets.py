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
# Notebook 02 (cache mechanics): the decode stepper panel and the cache size calculator
# =============================================================================================

import inspect  # noqa: E402
from html import escape  # noqa: E402  (kept in this section to keep merges easy)

import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Markdown, clear_output  # noqa: E402

from .bench import DTYPE_BYTES, PRESETS, ModelSpec, spec_of  # noqa: E402
from .memory import cache_size, dtype_bytes, human_bytes, reshaped  # noqa: E402
from .plots import cache_step_figure, token_text  # noqa: E402
from .stepper import DecodeStepper  # noqa: E402


def _table_html(rows, header=None) -> str:
    """A small HTML table; every cell escaped."""
    cell = 'style="text-align:left;padding:1px 10px 1px 0"'
    head = "".join(f"<th {cell}>{escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {cell}>{escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def code_block(obj) -> Markdown:
    """The source of a kvlab function or class, read from the installed file (never a copy)."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def shapes_html(stepper, steps: list[int]) -> HTML:
    """The tensor shapes of several steps side by side (e.g. the prefill and a decode step)."""
    tables = [stepper.shapes(step) for step in steps]
    header = ["tensor"] + [f"step {s} ({stepper.record(s).kind})" for s in steps]
    rows = [[name] + ["[" + ", ".join(map(str, table[i][1])) + "]" for table in tables]
            for i, (name, _, _) in enumerate(tables[0])]
    return HTML(_table_html(rows, header))


def comparison_html(comparison, lm) -> HTML:
    """An exactness.RunComparison as a table: step, both tokens, largest logit difference."""
    header = ["step", comparison.label_a, comparison.label_b, "largest |logit difference|"]
    return HTML(_table_html(comparison.table(lm.decode), header))


def gqa_html(specs: list[ModelSpec], n_tokens: int, dtype: str = "float32") -> HTML:
    """Cache bytes of each model as built vs with one KV head per query head."""
    rows = []
    for spec in specs:
        size = cache_size(spec, n_tokens, 1, dtype)
        rows.append([spec.name, spec.n_heads, spec.n_kv_heads, human_bytes(size.cache_bytes),
                     human_bytes(size.multi_head_cache_bytes),
                     f"{size.multi_head_cache_bytes / size.cache_bytes:.0f}x"])
    header = ["model", "query heads", "KV heads", f"cache, {n_tokens:,} tokens ({dtype})",
              "with full multi-head", "multi-head / actual"]
    return HTML(_table_html(rows, header))


class StepperPanel(widgets.VBox):
    """Step through greedy decoding: 'next token' advances the real decode state one step;
    the step slider looks back at any step taken; layer/head choose what is drawn."""

    def __init__(self, lm, prompt: str, max_new_tokens: int = 24):
        self.stepper = DecodeStepper(lm, prompt, max_new_tokens)
        self.prompt = widgets.Text(value=prompt, description="prompt",
                                   layout=widgets.Layout(width="60%"))
        self.restart = widgets.Button(description="start over with this prompt",
                                      layout=widgets.Layout(width="auto"))
        self.next_token = widgets.Button(description="next token", button_style="primary")
        self.step_slider = widgets.IntSlider(0, 0, 0, description="step")
        self.layer = widgets.IntSlider(0, 0, lm.n_layers - 1, description="layer")
        self.head = widgets.IntSlider(0, 0, lm.n_heads - 1, description="head")
        self.errors = widgets.Output()
        self.info = widgets.HTML()
        self.figure = widgets.Output()
        super().__init__([
            widgets.HBox([self.prompt, self.restart]),
            widgets.HBox([self.next_token, self.step_slider]),
            widgets.HBox([self.layer, self.head]),
            self.errors, self.info, self.figure])

        self.restart.on_click(lambda _: self.start_over())
        self.next_token.on_click(lambda _: self.advance())
        for control in (self.step_slider, self.layer, self.head):
            control.observe(lambda _: self.redraw(), names="value")
        self.stepper.step()  # the prefill, so there is something to show
        self._show_latest()

    def advance(self) -> None:
        """One more decode step (one forward pass of one token), then show it."""
        with errors_shown_in(self.errors):
            self.errors.clear_output()
            self.stepper.step()
            self._show_latest()

    def start_over(self) -> None:
        """Reset the cache with the prompt in the text box and run its prefill."""
        with errors_shown_in(self.errors):
            self.errors.clear_output()
            self.stepper.reset(self.prompt.value)
            self.stepper.step()
            self._show_latest()

    def _show_latest(self) -> None:
        latest = len(self.stepper.steps) - 1
        with self.step_slider.hold_trait_notifications():
            self.step_slider.max = latest
            self.step_slider.value = latest
        self.next_token.disabled = self.stepper.done
        self.redraw()

    def redraw(self) -> None:
        """Draw the chosen step, layer and head from what is stored (no model call)."""
        step = self.step_slider.value
        self.info.value = self._info_html(step)
        with self.figure:
            clear_output(wait=True)
            fig = cache_step_figure(self.stepper, self.layer.value, self.head.value, step)
            display(fig)
            plt.close(fig)

    def _info_html(self, step: int) -> str:
        stepper = self.stepper
        record = stepper.record(step)
        totals = stepper.totals(step)
        saved = 1 - totals["flops"] / totals["flops_recomputing"]
        text = _tokens_html(stepper, record)
        work = [
            ("this step", f"{record.kind}: {record.n_new} position(s) computed, "
                          f"{record.n_cached} reused from the cache"),
            ("so far, with the cache", f"{totals['positions_computed']} positions computed, "
                                       f"{totals['positions_reused']} reused; "
                                       f"{totals['flops'] / 1e9:.3f} GFLOPs"),
            ("so far, recomputing", f"{totals['positions_recomputing']} positions computed; "
                                    f"{totals['flops_recomputing'] / 1e9:.3f} GFLOPs"),
            ("saved by the cache", f"{saved:.0%} of the FLOPs"),
            ("cache now holds", f"{stepper.cache.length} positions, "
                                f"{stepper.cache.nbytes:,} bytes"),
        ]
        shapes = [(name, "[" + ", ".join(map(str, shape)) + "]", meaning)
                  for name, shape, meaning in stepper.shapes(step)]
        return (f"<div>{text}</div>{_table_html(work)}"
                f"<details><summary>shapes at step {record.index} (one layer)</summary>"
                f"{_table_html(shapes, ['tensor', 'shape', 'holds'])}</details>")


def _tokens_html(stepper, record) -> str:
    """Prompt tokens grey, tokens fed at this step outlined, the chosen next token green."""
    parts = []
    for position, token in enumerate(stepper.ids[:record.n_total]):
        label = escape(token_text(stepper.lm, token))
        if position >= record.n_cached:
            style = "outline:2px solid #e66100"
        elif position < len(stepper.prompt_ids):
            style = "color:#777"
        else:
            style = ""
        parts.append(f'<span style="{style};margin-right:2px">{label}</span>')
    chosen = escape(token_text(stepper.lm, record.next_id))
    parts.append(f'&nbsp;&rarr;&nbsp;<b style="color:#1a7f37">{chosen}</b>')
    return "".join(parts)


class CacheCalculator(widgets.VBox):
    """KV cache bytes for any shape, with presets from public configs, beside weight bytes."""

    def __init__(self, lm=None, preset: str = "Llama-3-8B", context: int = 8192):
        self.presets = dict(PRESETS)
        if lm is not None:
            self.presets[f"loaded: {lm.name}"] = spec_of(lm)
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(self.presets)}")
        self.preset = widgets.Dropdown(options=list(self.presets), value=preset,
                                       description="preset")
        self.n_layers = widgets.IntText(description="layers")
        self.n_heads = widgets.IntText(description="query heads")
        self.n_kv_heads = widgets.IntText(description="KV heads")
        self.head_dim = widgets.IntText(description="head_dim")
        self.context = widgets.IntText(value=context, description="context")
        self.batch = widgets.IntText(value=1, description="batch")
        self.dtype = widgets.Dropdown(options=list(DTYPE_BYTES), value="float16",
                                      description="dtype")
        self.errors = widgets.Output()
        self.result = widgets.HTML()
        super().__init__([
            self.preset,
            widgets.HBox([self.n_layers, self.n_heads]),
            widgets.HBox([self.n_kv_heads, self.head_dim]),
            widgets.HBox([self.context, self.batch, self.dtype]),
            self.errors, self.result])
        self._loading = False
        self.preset.observe(lambda _: self.load_preset(), names="value")
        for control in (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim,
                        self.context, self.batch, self.dtype):
            control.observe(lambda _: self.recompute(), names="value")
        self.load_preset()

    def load_preset(self) -> None:
        """Fill the shape fields from the chosen preset."""
        spec = self.presets[self.preset.value]
        self._loading = True
        self.n_layers.value, self.n_heads.value = spec.n_layers, spec.n_heads
        self.n_kv_heads.value, self.head_dim.value = spec.n_kv_heads, spec.head_dim
        self._loading = False
        self.recompute()

    def recompute(self) -> None:
        """Recompute and show the sizes; a bad field shows an error line instead."""
        if self._loading:
            return
        self.errors.clear_output()
        with errors_shown_in(self.errors):
            self.result.value = ""
            spec = reshaped(self.presets[self.preset.value], n_layers=self.n_layers.value,
                            n_heads=self.n_heads.value, n_kv_heads=self.n_kv_heads.value,
                            head_dim=self.head_dim.value)
            size = cache_size(spec, self.context.value, self.batch.value, self.dtype.value)
            self.result.value = _size_html(size)


def size_table(size) -> HTML:
    """A memory.CacheSize as a table: cache, per token, weights, multi-head equivalent."""
    return HTML(_size_html(size))


def _size_html(size) -> str:
    spec = size.spec
    rows = [
        ("KV cache", f"{human_bytes(size.cache_bytes)} ({size.cache_bytes:,} bytes)"),
        ("per token (whole batch)", f"{human_bytes(size.per_token_bytes)} "
                                    f"({size.per_token_bytes:,} bytes)"),
        ("weights", f"{human_bytes(size.weight_bytes)} ({spec.n_params / 1e6:,.0f}M "
                    f"parameters in {size.dtype})"),
        ("cache / weights", f"{size.cache_to_weights:.2f}"),
        ("with full multi-head attention", f"{human_bytes(size.multi_head_cache_bytes)} "
                                           f"({spec.n_heads} KV heads instead of "
                                           f"{spec.n_kv_heads})"),
    ]
    formula = (f"2 (keys and values) x {spec.n_layers} layers x {size.batch} batch x "
               f"{spec.n_kv_heads} KV heads x {spec.head_dim} head_dim x {size.n_tokens:,} "
               f"tokens x {dtype_bytes(size.dtype)} bytes = {size.cache_bytes:,} bytes")
    return f"{_table_html(rows)}<div style='color:#555'>{escape(formula)}</div>"


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

